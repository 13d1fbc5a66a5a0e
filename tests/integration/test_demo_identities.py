"""The demo logs every certificate it issues offline, so replay shows who held which identity in the demo too.

``meshlog.demo.trust.DemoTrust`` against the real broker: certificates issued
before the log exists (the demo's own operator identity, and the broker's,
read from their files) are appended by ``start_logging``; afterwards each
offline issuance is appended when it is made, a ``batch()`` in one go. The
identities fold (``identity.registry``, what ``replay identities`` and
``meshlog ca serve`` read) then knows every one of them as issued offline.
"""

from __future__ import annotations

import asyncio

import pytest

from events.admin import ensure_topics
from identity import pki, spiffe
from identity.log import IdentityLog
from meshlog import kafka_tls
from meshlog.demo.trust import DemoTrust

pytestmark = pytest.mark.integration


def serial(files: pki.IdentityFiles) -> str:
    return pki.serial_hex(pki.cert_from_pem(files.cert.read_bytes()))


async def registry(bootstrap: str):
    async with IdentityLog(bootstrap) as log:
        return await log.sync()


def test_every_offline_issuance_of_the_demo_is_an_identity_event(kafka_bootstrap, tmp_path):
    """(Synchronous, as the demo's stack is: DemoTrust runs an event loop for each append.)"""
    asyncio.run(ensure_topics(kafka_bootstrap))
    trust = DemoTrust(tmp_path / "tls")
    operator = trust.identity("operator/demo")  # before the log exists: kept until start_logging
    broker = kafka_tls.issue_files(trust.ca, spiffe.SpiffeId.of(trust.domain, "broker", "1"), tmp_path / "broker")
    assert asyncio.run(registry(kafka_bootstrap)).certificates.get(serial(operator)) is None

    assert trust.start_logging(kafka_bootstrap, (broker,)) == 2
    projector = trust.identity("projector")  # logged as it is made
    with trust.batch():
        gateways = [trust.gateway(f"gateway-{i}") for i in (1, 2)]
        assert trust.unlogged  # not yet: one append at the end of the batch
    assert trust.unlogged == [] and trust.logged == 5

    reg = asyncio.run(registry(kafka_bootstrap))
    for files, path in ((operator, "operator/demo"), (broker, "broker/1"), (projector, "projector"),
                        (gateways[0], "gateway/gateway-1"), (gateways[1], "gateway/gateway-2")):
        logged = reg.certificates[serial(files)]
        assert logged.spiffe_id == f"spiffe://{trust.domain}/{path}" and logged.how == "offline"

