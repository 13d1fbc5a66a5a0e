"""Story: a sidecar renews its own workload certificate at `meshlog ca serve`, with no manual step.

A real broker, `meshlog ca serve` issuing 45 s certificates, the projector, a TLS-only `xds-gateway run`
and a `meshlog-sidecar run --ca-url` whose first certificate (issued offline and logged, like `meshlog
ca issue`) lives 45 s. Certificates are backdated by pki.CLOCK_SKEW (60 s), so 2/3 of a 45 s life is
reached ~10 s after issue: within the test the agent renews over mTLS, its Envoy presents the new serial
(admin /certs) without a restart, and the renewal is an `identity.issued` event with how=renewal in
meshlog.identities that renews the serial the sidecar started with.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from identity import pki, records, spiffe
from identity.log import IdentityLog
from tests.integration.test_ca import _start_replica
from tests.integration.test_sidecar_e2e import start_sidecar
from tests.integration.test_xds_tls_stack import presented_serials
from tests.support.apps import App
from tests.support.stack import start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

D = "renew.it"
LIFETIME = timedelta(seconds=45)


def _issue(ca: pki.CertificateAuthority, ident, directory, *, lifetime=timedelta(hours=1), server_names=()):
    key = pki.generate_key()
    cert = pki.issue(ca, ident, key.public_key(), lifetime=lifetime, server_names=server_names)
    return cert, pki.save_identity(directory, cert, key, ca.certificate)


async def _log_issued(bootstrap: str, cert, root) -> None:
    async with EventProducer(bootstrap) as producer:  # what `meshlog ca issue` appends before writing the files
        await producer.append(new_event(records.issued(cert, root, how="offline", requested_by="test")))


async def _registry(bootstrap: str):
    async with IdentityLog(bootstrap) as log:
        return await log.sync()


def test_the_sidecar_renews_its_certificate_by_itself_and_envoy_presents_it_without_a_restart(kafka_bootstrap,
                                                                                                tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    ca = pki.create_root(D)
    pki.save_ca(ca, tmp_path / "ca")
    service = f"renew{uuid.uuid4().hex[:6]}"
    _gw_cert, gw_files = _issue(ca, spiffe.gateway(D, "g1"), tmp_path / "gw", server_names=("127.0.0.1", "localhost"))
    first, sc_files = _issue(ca, spiffe.sidecar(D, service, "r1"), tmp_path / "r1", lifetime=LIFETIME)
    asyncio.run(_log_issued(kafka_bootstrap, first, ca.certificate))
    app = App("r1", "v1", service).start()
    serve, url = _start_replica(kafka_bootstrap, tmp_path / "ca", "ca-renew", tmp_path,
                                extra=("--lifetime", f"{int(LIFETIME.total_seconds())}s"))
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway-renew", identity=gw_files)
        started.append(gateway)
        sidecar = start_sidecar("r1", tmp_path, kafka_bootstrap, [f"127.0.0.1:{gateway.info['xds_port']}"],
                                service=service, instance="r1", app_port=app.port, identity=sc_files,
                                extra=("--ca-url", url))
        started.append(sidecar)
        wait_until(lambda: sidecar.status().get("envoy") and sidecar.status()["envoy"]["state"] == "LIVE", 60,
                   "the sidecar's Envoy to be LIVE", on_fail=sidecar.log_tail)
        envoy_pid = sidecar.status()["envoy"]["pid"]

        def renewed() -> set[int]:
            try:
                return presented_serials(sidecar) - {first.serial_number}
            except (OSError, ValueError):
                return set()

        # due ~10 s after issue; no `meshlog ca renew`, nothing written by the test
        wait_until(renewed, 60, "Envoy to present a renewed certificate",
                   on_fail=lambda: sidecar.log_tail() + (tmp_path / "ca-renew.log").read_text()[-2000:])
        now_presented = renewed()
        assert first.serial_number not in presented_serials(sidecar)  # replaced, not added
        status = sidecar.status()
        assert status["envoy"]["pid"] == envoy_pid and status["restarts"] == 0  # SDS, no restart
        assert status["certificate"]["renewals"] >= 1 and status["certificate"]["ca_url"] == url
        # the files hold a matching pair of the same identity, newer than the first
        m = pki.load_identity(sc_files.cert.parent)
        assert m[1].public_key().public_numbers() == m[0].public_key().public_numbers()
        assert pki.spiffe_id_of(m[0]) == spiffe.sidecar(D, service, "r1")

        reg = asyncio.run(_registry(kafka_bootstrap))
        renewal = [c for c in reg.certificates.values() if c.renews_serial == pki.serial_hex(first)]
        assert len(renewal) == 1 and renewal[0].how == "renewal", renewal
        assert renewal[0].spiffe_id == f"spiffe://{D}/sidecar/{service}/r1"
        for serial in now_presented:  # what Envoy presents is a renewal the log knows
            assert reg.certificates[pki.serial_hex(serial)].how == "renewal"
    finally:
        for process in reversed(started):
            process.stop()
        serve.terminate()
        try:
            serve.wait(10)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            serve.kill()
        app.stop()
