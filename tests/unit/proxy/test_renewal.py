"""The sidecar's own certificate renewal: the pure schedule, and the shell writing a matching pair to Envoy."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import datetime, timedelta, timezone

import pytest

from identity import client, pki, spiffe
from proxy import renewal, sds
from tests.support.trust import MeshCA

D = "mesh.test"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(hours=24)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# ---------------------------------------------------------------- next_attempt (pure)

def test_the_first_attempt_is_at_two_thirds_of_the_life():
    assert renewal.next_attempt(T0, T0, T0 + DAY, 0) == T0 + timedelta(hours=16)
    # the same instant the CA prints as renew_after
    assert renewal.next_attempt(T0 + s(5), T0, T0 + DAY, 0) == pki.renewal_time(T0, T0 + DAY)


def test_a_certificate_already_due_is_renewed_soon_but_never_in_a_busy_loop():
    now = T0 + timedelta(hours=20)
    assert renewal.next_attempt(now, T0, T0 + DAY, 0) == now + s(renewal.MIN_GAP_S)
    # a CA lifetime shorter than its backdating: due at issue, still at most once per MIN_GAP_S
    assert renewal.next_attempt(T0 + s(60), T0, T0 + s(80), 0) == T0 + s(60 + renewal.MIN_GAP_S)


def test_failures_back_off_doubling_up_to_the_bound():
    now = T0 + timedelta(hours=16)
    delays = [(renewal.next_attempt(now, T0, T0 + DAY, n) - now).total_seconds() for n in range(1, 10)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert renewal.next_attempt(now, T0, T0 + DAY, 10_000) == now + s(renewal.RETRY_MAX_S)


def test_near_expiry_retries_come_faster_so_several_fit_before_it():
    end = T0 + DAY
    assert renewal.next_attempt(end - s(100), T0, end, 9) == end - s(75)  # a quarter of the 100 s left
    assert renewal.next_attempt(end - s(2), T0, end, 9) == end - s(1)     # never below RETRY_FIRST_S
    assert renewal.next_attempt(end - s(100), T0, end, 2) == end - s(98)  # the backoff if it is shorter


def test_an_expired_certificate_is_still_retried_at_the_bound():
    now = T0 + DAY + s(1)
    assert renewal.next_attempt(now, T0, T0 + DAY, 1) == now + s(1)
    assert renewal.next_attempt(now, T0, T0 + DAY, 20) == now + s(renewal.RETRY_MAX_S)


# ---------------------------------------------------------------- the shell, with a CA in memory

class FakeCa:
    """Stands in for `ca serve`'s /v1/renew: checks the presented files match, issues for a new key."""

    def __init__(self, ca: MeshCA, lifetime: timedelta) -> None:
        self.ca, self.lifetime = ca, lifetime
        self.calls = 0
        self.refuse: Exception | None = None

    async def renew(self, url: str, files: pki.IdentityFiles, **_kw) -> client.Granted:
        self.calls += 1
        if self.refuse is not None:
            raise self.refuse
        current = pki.cert_from_pem(files.cert.read_bytes())
        key_now = pki.key_from_pem(files.key.read_bytes())
        assert key_now.public_key().public_numbers() == current.public_key().public_numbers()
        key = pki.generate_key()
        cert = pki.issue(self.ca.authority, pki.spiffe_id_of(current), key.public_key(), lifetime=self.lifetime)
        return client.Granted(cert=cert, key=key, root=self.ca.authority.certificate)


@pytest.fixture
def setup(tmp_path):
    ca = MeshCA(D, tmp_path / "ca")
    ident = ca.issue(spiffe.sidecar(D, "web", "w1"), "web-w1")
    files = sds.SidecarTls(ident.cert, ident.key, ident.ca)
    sync = sds.SecretSync(files, tmp_path / "sds", sds.load_tls(files))
    sync.start()
    return ca, ident, files, sync, tmp_path / "sds"


def test_a_renewal_writes_a_matching_pair_and_hands_it_to_envoy_at_once(setup):
    ca, ident, files, sync, sds_dir = setup
    fake = FakeCa(ca, timedelta(hours=1))
    changes = []
    renewer = renewal.CertificateRenewer("https://ca:8443", files, sync, renew=fake.renew,
                                         on_change=lambda: changes.append(1))
    old_serial = sync.current.serial
    assert asyncio.run(renewer.attempt())
    m = sds.load_tls(files)  # raises if the key is not the certificate's
    assert m.serial != old_serial and sync.current.serial == m.serial
    workload = json.loads((sds_dir / sds.WORKLOAD_FILE).read_text())["resources"][0]["tls_certificate"]
    assert workload["certificate_chain"]["inline_string"] == m.cert_pem.decode()
    assert workload["private_key"]["inline_string"] == m.key_pem.decode()
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert (renewer.renewals, renewer.failures, changes) == (1, 0, [1])
    # the next attempt is scheduled from the new certificate
    new = pki.cert_from_pem(m.cert_pem)
    assert renewer.next_at == pki.renewal_due(new)
    assert renewer.status()["serial"] == pki.serial_hex(new)


def test_a_refused_renewal_backs_off_and_leaves_the_files_alone(setup, caplog):
    ca, ident, files, sync, _ = setup
    fake = FakeCa(ca, timedelta(hours=1))
    fake.refuse = client.CaRefused(503, "log_unavailable", "Kafka does not answer")
    now = datetime.now(timezone.utc)
    renewer = renewal.CertificateRenewer("https://ca:8443", files, sync, renew=fake.renew, clock=lambda: now)
    before = (files.cert.read_bytes(), files.key.read_bytes())
    with caplog.at_level("WARNING", logger="meshlog.sidecar.renewal"):
        for _ in range(3):
            assert not asyncio.run(renewer.attempt())
    assert (files.cert.read_bytes(), files.key.read_bytes()) == before
    assert renewer.failures == 3 and renewer.next_at == now + s(4)
    assert "log_unavailable" in renewer.status()["last_error"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "failing" in lines[0]  # once, then counted (meshlog.outage)
    fake.refuse = None
    with caplog.at_level("INFO", logger="meshlog.sidecar.renewal"):
        assert asyncio.run(renewer.attempt())
    assert renewer.failures == 0
    assert any("works again after 3 failed attempts" in r.getMessage() for r in caplog.records)


def test_a_certificate_that_cannot_be_written_puts_the_previous_key_back(setup):
    ca, ident, files, sync, _ = setup
    granted = asyncio.run(FakeCa(ca, timedelta(hours=1)).renew("u", pki.IdentityFiles(files.cert, files.key,
                                                                                        files.ca)))
    old_key = files.key.read_bytes()
    broken = sds.SidecarTls(files.cert.parent / "no-such-dir" / "cert.pem", files.key, files.ca)
    renewer = renewal.CertificateRenewer("https://ca:8443", broken, sync)
    with pytest.raises(OSError):
        renewer.install(granted)
    assert files.key.read_bytes() == old_key


def test_a_certificate_replaced_by_someone_else_restarts_the_schedule(setup):
    ca, ident, files, sync, _ = setup
    renewer = renewal.CertificateRenewer("https://ca:8443", files, sync, renew=FakeCa(ca, DAY).renew)
    renewer.failures = 5
    renewer._follow_current(datetime.now(timezone.utc))
    first = renewer.next_at
    other = ca.issue(spiffe.sidecar(D, "web", "w1"), "elsewhere", lifetime=DAY)
    pki.write_file_atomic(files.key, other.key_pem, 0o600)
    pki.write_file_atomic(files.cert, other.cert_pem)
    assert sync.check()
    renewer._follow_current(datetime.now(timezone.utc))
    assert renewer.failures == 0 and renewer.next_at > first
    assert renewer.next_at == pki.renewal_due(pki.cert_from_pem(other.cert_pem))


def test_an_expired_certificate_is_an_error_line_once(setup, caplog):
    ca, ident, files, sync, _ = setup
    fake = FakeCa(ca, DAY)
    fake.refuse = client.CaRefused(403, "expired", "expired")
    renewer = renewal.CertificateRenewer("https://ca:8443", files, sync, renew=fake.renew,  # MeshCA issues for 1 h
                                         clock=lambda: datetime.now(timezone.utc) + timedelta(hours=2))

    async def run_a_while():
        task = asyncio.create_task(renewer.run())
        await asyncio.sleep(2.5)  # due at once: tried after MIN_GAP_S, again 1 s later
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("ERROR", logger="meshlog.sidecar.renewal"):
        asyncio.run(run_a_while())
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "expired" in errors[0], errors
    assert fake.calls >= 1 and renewer.failures == fake.calls
