"""Story: a checker verifies the registrations it reads, as the projector does, and never probes a forged one.

Real broker (its own, so the log holds only this story's identities), a real
``registrar healthcheck`` subprocess in the default (verifying) mode, two
HTTP apps. Given the certificates of reviews/r1 and web/w1 issued in the log,
reviews/r1 registered by its own sidecar identity and reviews/evil registered
with web's identity (a valid certificate of another service): the checker
probes r1 and tracks it; it never probes evil, and its status shows r1 only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from events.signing import Signer
from identity import pki, records, spiffe
from meshlog.procs import BIN, spawn, wait_until
from tests.integration.test_healthcheck import INTERVAL, HealthApp, registration

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

DOMAIN = "mesh.local"


@pytest.fixture(scope="module")
def broker():
    from meshlog.kafka_local import LocalKafka

    with LocalKafka() as kafka:
        asyncio.run(ensure_topics(kafka.bootstrap))
        yield kafka.bootstrap


async def _append(bootstrap: str, signer: Signer | None, payload) -> None:
    async with EventProducer(bootstrap, signer=signer) as producer:
        await producer.append(new_event(payload, producer="test"))


def test_a_verifying_checker_never_probes_a_forged_registration(broker, tmp_path):
    service = f"reviews-{uuid.uuid4().hex[:6]}"
    ca = pki.create_root(DOMAIN)
    signers = {}
    for ident in (spiffe.sidecar(DOMAIN, service, "r1"), spiffe.sidecar(DOMAIN, "web", "w1")):
        key = pki.generate_key()
        cert = pki.issue(ca, ident, key.public_key())
        asyncio.run(_append(broker, None, records.issued(cert, ca.certificate, how="offline", requested_by="t")))
        signers[ident.field("service")] = Signer(key, pki.serial_hex(cert))
    honest, forged = HealthApp(), HealthApp()
    env = {"MESHLOG_INSECURE_EVENTS": "0"}  # the default, verifying (spawn adds the test run's environment)
    status_file = tmp_path / "hc.status.json"
    checker = spawn("hc-verify", [
        str(BIN / "registrar"), "--bootstrap", broker, "healthcheck", "--checker-id", "hc-verify",
        "--group", f"hc-{uuid.uuid4().hex[:8]}", "--interval", str(INTERVAL), "--timeout", "0.5",
        "--status-file", str(status_file)], tmp_path, env=env)
    try:
        asyncio.run(_append(broker, signers[service], registration(service, "r1", honest.port)))
        asyncio.run(_append(broker, signers["web"], registration(service, "evil", forged.port)))  # web's identity
        wait_until(lambda: len(honest.probes) >= 2, 60, "the honest instance probed", on_fail=checker.log_tail)
        time.sleep(INTERVAL * 4)  # several probe rounds: the forged instance would have been probed by now
        assert forged.probes == []
        assert list(json.loads(status_file.read_text())["instances"]) == [f"{service}/r1"]
    finally:
        checker.stop()
        honest.stop()
        forged.stop()
