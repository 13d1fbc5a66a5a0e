"""Story: the mesh CA on the real broker — join with a token, one use across replicas, renewal, revocation.

Two `meshlog ca serve` replicas (real processes, HTTPS on loopback) share one CA
directory and the session's Kafka broker; the tests talk to them with
``identity.client`` and the `meshlog ca` / `replay` console scripts, and read
the identities topic back.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import orjson
import pytest

from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from identity import client, pki, records, spiffe
from identity.client import CaRefused
from identity.log import IdentityLog

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MESHLOG = str(BIN / "meshlog")
REPLAY = str(BIN / "replay")
DOMAIN = "it.mesh"


def run(*args: str, bootstrap: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "MESHLOG_PRODUCER": "ca-integration-test"}
    if bootstrap:
        env["MESHLOG_KAFKA_BOOTSTRAP"] = bootstrap
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "root"
    r = run(MESHLOG, "ca", "init", "--domain", DOMAIN, "--dir", str(d))
    assert r.returncode == 0, r.stderr
    return d


def _start_replica(bootstrap: str, ca_dir: Path, name: str, workdir: Path,
                   extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    ready = workdir / f"{name}.port"
    logfile = open(workdir / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [MESHLOG, "ca", "serve", "--dir", str(ca_dir), "--bootstrap", bootstrap, "--port", "0",
         "--replica", name, "--ready-file", str(ready), *extra],
        stdout=logfile, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"ca serve {name} did not start:\n{(workdir / f'{name}.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, f"https://127.0.0.1:{int(ready.read_text())}"


@pytest.fixture(scope="module")
async def replicas(kafka_bootstrap, ca_dir, tmp_path_factory):
    await ensure_topics(kafka_bootstrap)
    work = tmp_path_factory.mktemp("ca-serve")
    started = [_start_replica(kafka_bootstrap, ca_dir, name, work) for name in ("ca-0", "ca-1")]
    yield [url for _p, url in started]
    for proc, _url in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def root(ca_dir):
    return pki.load_bundle(ca_dir / pki.CA_CERT_FILE)


def token(ca_dir: Path, service: str, ttl: str = "10m") -> str:
    r = run(MESHLOG, "ca", "token", "--service", service, "--ttl", ttl, "--dir", str(ca_dir))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


async def registry(bootstrap: str):
    async with IdentityLog(bootstrap) as log:
        return await log.sync()


async def test_join_over_https_issues_a_logged_sidecar_certificate(kafka_bootstrap, replicas, ca_dir, root):
    t = token(ca_dir, "reviews")
    granted = await client.join(replicas[0], token=t, service="reviews", instance="r1", root=root)
    assert pki.verify(granted.cert, root) == spiffe.sidecar(DOMAIN, "reviews", "r1")
    serial = pki.serial_hex(granted.cert)
    reg = await registry(kafka_bootstrap)
    held = reg.certificates[serial]
    assert held.spiffe_id == f"spiffe://{DOMAIN}/sidecar/reviews/r1" and held.how == "join_token"
    assert held.issuer == f"spiffe://{DOMAIN}/ca"
    assert pki.public_key_from_pem(held.public_key).public_numbers() == granted.key.public_key().public_numbers()
    assert held.not_after == granted.cert.not_valid_after_utc
    assert reg.token_used(held.join_token_id)


async def test_a_token_is_used_once_across_replicas(replicas, ca_dir, root):
    t = token(ca_dir, "reviews")
    await client.join(replicas[0], token=t, service="reviews", instance="r2", root=root)
    with pytest.raises(CaRefused) as err:
        await client.join(replicas[1], token=t, service="reviews", instance="r3", root=root)
    assert (err.value.status, err.value.reason) == (403, "used")
    with pytest.raises(CaRefused) as err:  # and on the replica that accepted it
        await client.join(replicas[0], token=t, service="reviews", instance="r2", root=root)
    assert err.value.reason == "used"


async def test_racing_replicas_grant_a_token_once(replicas, ca_dir, root):
    for _ in range(3):
        t = token(ca_dir, "reviews")
        results = await asyncio.gather(
            *(client.join(url, token=t, service="reviews", instance=f"race{i}", root=root)
              for i, url in enumerate(replicas * 2)),
            return_exceptions=True)
        granted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, CaRefused)]
        assert len(granted) == 1 and len(refused) == 3, results
        assert {r.reason for r in refused} == {"used"}


async def test_token_for_another_service_and_expired_token_are_refused(replicas, ca_dir, root):
    with pytest.raises(CaRefused) as err:
        await client.join(replicas[0], token=token(ca_dir, "ratings"), service="reviews", instance="r9", root=root)
    assert (err.value.status, err.value.reason) == (403, "wrong_service")
    assert "ratings" in err.value.detail
    short = token(ca_dir, "reviews", ttl="1s")
    await asyncio.sleep(1.5)
    with pytest.raises(CaRefused) as err:
        await client.join(replicas[0], token=short, service="reviews", instance="r9", root=root)
    assert err.value.reason == "expired"


async def test_malformed_csr_and_body_are_refused_with_their_reason(replicas, ca_dir, root):
    ctx = client.client_ssl_context(root)
    async with aiohttp.ClientSession() as session:
        doc = {"token": token(ca_dir, "reviews"), "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
               "-----END CERTIFICATE REQUEST-----\n", "service": "reviews", "instance": "r1"}
        async with session.post(replicas[0] + "/v1/join", data=orjson.dumps(doc), ssl=ctx) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "malformed"
        async with session.post(replicas[0] + "/v1/join", data=b"{not json", ssl=ctx) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_renewal_over_mtls_keeps_the_identity(kafka_bootstrap, replicas, ca_dir, root, tmp_path):
    first = await client.join(replicas[0], token=token(ca_dir, "reviews"), service="reviews", instance="renew1",
                              root=root)
    files = pki.save_identity(tmp_path, first.cert, first.key, root)
    second = await client.renew(replicas[1], files)
    assert pki.spiffe_id_of(second.cert) == pki.spiffe_id_of(first.cert)
    assert second.cert.serial_number != first.cert.serial_number
    reg = await registry(kafka_bootstrap)
    renewed = reg.certificates[pki.serial_hex(second.cert)]
    assert renewed.how == "renewal" and renewed.renews_serial == pki.serial_hex(first.cert)
    # renewal without a client certificate
    async with aiohttp.ClientSession() as session:
        async with session.post(replicas[0] + "/v1/renew", data=b'{"csr": "x"}',
                                ssl=client.client_ssl_context(root)) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "no_client_certificate"


async def test_revoke_is_an_event_and_a_revoked_certificate_cannot_renew(kafka_bootstrap, replicas, ca_dir, root,
                                                                          tmp_path):
    granted = await client.join(replicas[0], token=token(ca_dir, "reviews"), service="reviews", instance="rev1",
                                root=root)
    serial = pki.serial_hex(granted.cert)
    files = pki.save_identity(tmp_path, granted.cert, granted.key, root)
    r = run(MESHLOG, "ca", "revoke", serial, "--reason", "key left on a laptop", "--dir", str(ca_dir),
            bootstrap=kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    reg = await registry(kafka_bootstrap)
    assert reg.revocation(serial).reason == "key left on a laptop"
    assert reg.revocation(serial).spiffe_id == f"spiffe://{DOMAIN}/sidecar/reviews/rev1"
    with pytest.raises(CaRefused) as err:
        await client.renew(replicas[1], files)
    assert (err.value.status, err.value.reason) == (403, "revoked")
    again = run(MESHLOG, "ca", "revoke", serial, "--dir", str(ca_dir), bootstrap=kafka_bootstrap)
    assert again.returncode == 2 and "already revoked" in again.stderr
    unknown = run(MESHLOG, "ca", "revoke", "abcdef0123", "--dir", str(ca_dir), bootstrap=kafka_bootstrap)
    assert unknown.returncode == 2 and "was ever recorded as issued" in unknown.stderr


async def test_expired_certificate_cannot_renew(kafka_bootstrap, replicas, ca_dir, root, tmp_path):
    ca = pki.load_ca(ca_dir)
    key = pki.generate_key()
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    cert = pki.issue(ca, spiffe.sidecar(DOMAIN, "reviews", "old1"), key.public_key(), now=past,
                     lifetime=timedelta(hours=1))
    async with EventProducer(kafka_bootstrap) as producer:  # logged, so only its age is wrong
        await producer.append(new_event(records.issued(cert, root, how="offline", requested_by="test")))
    files = pki.save_identity(tmp_path, cert, key, root)
    with pytest.raises(CaRefused) as err:
        await client.renew(replicas[0], files)
    assert (err.value.status, err.value.reason) == (403, "expired")


async def test_certificate_of_another_trust_domain_is_refused(kafka_bootstrap, replicas, root, tmp_path):
    other = pki.create_root(DOMAIN)  # same name, another key: an impostor CA
    key = pki.generate_key()
    cert = pki.issue(other, spiffe.sidecar(DOMAIN, "reviews", "r1"), key.public_key())
    files = pki.save_identity(tmp_path, cert, key, root)  # trusts the real root for the server
    before = (await registry(kafka_bootstrap)).events
    with pytest.raises(pki.CertificateRefused) as err:  # our client names the reason before connecting
        await client.renew(replicas[0], files)
    assert err.value.reason == "untrusted_issuer"
    # a client that presents it anyway is stopped by the server's TLS handshake
    ctx = client.client_ssl_context(root, files=files)
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            async with session.post(replicas[0] + "/v1/renew", data=b'{"csr": "x"}', ssl=ctx) as resp:
                await resp.read()
    after = await registry(kafka_bootstrap)
    assert not any(c.spiffe_id.endswith("/reviews/r1") and c.how == "renewal"
                   for c in after.certificates.values())
    assert after.events == before


def test_offline_issue_writes_0600_key_and_logs_the_identity(kafka_bootstrap, ca_dir, tmp_path):
    out = tmp_path / "projector"
    r = run(MESHLOG, "ca", "issue", "--dir", str(ca_dir), "--role", "projector", "--out", str(out),
            bootstrap=kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((out / pki.KEY_FILE).stat().st_mode) == 0o600
    cert = pki.cert_from_pem((out / pki.CERT_FILE).read_bytes())
    reg = asyncio.run(registry(kafka_bootstrap))
    assert reg.certificates[pki.serial_hex(cert)].spiffe_id == f"spiffe://{DOMAIN}/projector"
    bad = run(MESHLOG, "ca", "issue", "--dir", str(ca_dir), "--role", "wizard", "--name", "x", "--out",
              str(tmp_path / "w"), bootstrap=kafka_bootstrap)
    assert bad.returncode == 2 and "role 'wizard'" in bad.stderr and not (tmp_path / "w").exists()


async def test_replay_shows_identities_held_and_the_issuance_log(kafka_bootstrap, replicas, ca_dir, root):
    from events.types import InstanceRegistered

    async with EventProducer(kafka_bootstrap) as producer:  # replay log needs a mesh event in its window
        await producer.append(new_event(InstanceRegistered(service="details", instance_id="d1",
                                                           address="127.0.0.1", port=9080)))
    granted = await client.join(replicas[0], token=token(ca_dir, "details"), service="details", instance="d1",
                                root=root)
    serial = pki.serial_hex(granted.cert)
    await asyncio.sleep(0.05)
    r = run(REPLAY, "identities", "--at", "now", "--json", "--service", "details", "--bootstrap", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert [(c["spiffe_id"], c["serial"]) for c in doc["held"]] == [(f"spiffe://{DOMAIN}/sidecar/details/d1", serial)]
    before = run(REPLAY, "identities", "--at", "@1000", "--json", "--bootstrap", kafka_bootstrap)
    assert before.returncode == 0 and orjson.loads(before.stdout)["held"] == []
    revoked = run(MESHLOG, "ca", "revoke", serial, "--reason", "decommissioned", "--dir", str(ca_dir),
                  bootstrap=kafka_bootstrap)
    assert revoked.returncode == 0, revoked.stderr
    await asyncio.sleep(0.05)
    after = orjson.loads(run(REPLAY, "identities", "--at", "now", "--json", "--service", "details",
                             "--bootstrap", kafka_bootstrap).stdout)
    assert after["held"] == [] and [c["serial"] for c in after["revoked"]] == [serial]
    # replay log lists issuance and revocation in the window (the mesh topics must exist for replay log)
    log = run(REPLAY, "log", "--from", "-5m", "--to", "now", "--service", "details", "--json",
              "--bootstrap", kafka_bootstrap)
    assert log.returncode == 0, log.stderr
    entries = orjson.loads(log.stdout)["identities"]
    kinds = [(e["type"], e.get("serial")) for e in entries]
    assert ("identity.issued", serial) in kinds and ("identity.revoked", serial) in kinds
    assert ("join_token.redeemed", None) in kinds
    text = run(REPLAY, "log", "--from", "-5m", "--to", "now", "--service", "details", "--bootstrap", kafka_bootstrap)
    assert "decommissioned" in text.stdout and f"spiffe://{DOMAIN}/sidecar/details/d1" in text.stdout


@pytest.mark.parametrize("role,name", [("projector", None), ("gateway", "g1"), ("checker", "c1")])
async def test_every_control_plane_role_renews_itself_with_the_one_renewal_loop(kafka_bootstrap, replicas, ca_dir,
                                                                                role, name, tmp_path):
    """`--ca-url` of projector run / xds-gateway run / registrar healthcheck: the files of an offline (logged)
    certificate are renewed in place by identity.renewal's loop at `ca serve`, and the renewal is logged."""
    import argparse

    from identity import renewal_cli

    out = tmp_path / role
    r = run(MESHLOG, "ca", "issue", "--dir", str(ca_dir), "--role", role, *(["--name", name] if name else []),
            "--out", str(out), "--lifetime", "10s", bootstrap=kafka_bootstrap)  # backdated 60 s: due at once
    assert r.returncode == 0, r.stderr
    files = pki.IdentityFiles.in_dir(out)
    first = pki.cert_from_pem(files.cert.read_bytes())
    [renewer] = renewal_cli.renewers_from_args(argparse.Namespace(ca_url=replicas[1]), role, files, environ={})

    async def until_renewed():
        deadline = time.monotonic() + 30
        while pki.cert_from_pem(files.cert.read_bytes()).serial_number == first.serial_number:
            assert time.monotonic() < deadline, renewer.status()
            await asyncio.sleep(0.2)

    await renewal_cli.running([renewer], until_renewed())
    renewed = pki.cert_from_pem(files.cert.read_bytes())
    assert pki.spiffe_id_of(renewed) == pki.spiffe_id_of(first)
    key = pki.key_from_pem(files.key.read_bytes())
    assert key.public_key().public_numbers() == renewed.public_key().public_numbers()
    logged = (await registry(kafka_bootstrap)).certificates[pki.serial_hex(renewed)]
    assert logged.how == "renewal" and logged.renews_serial == pki.serial_hex(first)
