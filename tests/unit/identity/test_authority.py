"""identity.authority: the CA endpoint's refusals, each with its reason and HTTP status."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from events.envelope import Logged, new_event
from identity import authority, pki, records, spiffe, tokens
from identity.authority import JoinRequest, Refused
from identity.registry import EMPTY, fold_many

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MS0 = int(T0.timestamp() * 1000)


@pytest.fixture(scope="module")
def ca():
    return pki.create_root("mesh.local", now=T0 - timedelta(days=1))


def csr_pem(key=None) -> str:
    return pki.make_csr(key or pki.generate_key()).public_bytes(serialization.Encoding.PEM).decode()


def refused(fn) -> Refused:
    with pytest.raises(Refused) as err:
        fn()
    return err.value


def test_join_grants_the_tokens_service_and_the_asked_instance(ca):
    req = JoinRequest(tokens.mint(ca, "reviews", now=T0), csr_pem(), "reviews", "r1")
    enrollment = authority.check_join(ca, req, now=T0)
    assert enrollment.spiffe_id == spiffe.sidecar("mesh.local", "reviews", "r1")


@pytest.mark.parametrize("change,reason,status", [
    (dict(service="ratings"), "wrong_service", 403),
    (dict(csr_pem="garbage"), "malformed", 400),
    (dict(instance="a/b"), "bad_instance", 400),
    (dict(token="mlj1.x.y"), "malformed", 400),
])
def test_join_refusals(ca, change, reason, status):
    fields = dict(token=tokens.mint(ca, "reviews", now=T0), csr_pem=csr_pem(), service="reviews", instance="r1")
    fields.update(change)
    err = refused(lambda: authority.check_join(ca, JoinRequest(**fields), now=T0))
    assert (err.reason, err.status) == (reason, status)


def test_expired_token(ca):
    req = JoinRequest(tokens.mint(ca, "reviews", now=T0, ttl=timedelta(minutes=1)), csr_pem(), "reviews", "r1")
    assert refused(lambda: authority.check_join(ca, req, now=T0 + timedelta(minutes=2))).reason == "expired"


def test_used_token_and_lost_race(ca):
    token = tokens.read(tokens.mint(ca, "reviews", now=T0), ca.certificate, now=T0)
    reg = fold_many(EMPTY, [Logged(new_event(records.redeemed(token, "r1", "a" * 24)), "t", 0, 3, MS0)])
    assert refused(lambda: authority.check_unused(reg, token.token_id)).reason == "used"
    authority.check_claim_won(reg, token.token_id, "a" * 24)
    assert refused(lambda: authority.check_claim_won(reg, token.token_id, "b" * 24)).reason == "used"


@pytest.mark.parametrize("body,problem", [
    (b"{", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"token": "t", "csr": "c", "service": "s"}', "'instance' is required"),
    (b'{"token": "t", "csr": "c", "service": "s", "instance": "i", "admin": "yes"}', "unknown field"),
    (b"x" * (authority.MAX_BODY + 1), "larger than"),
])
def test_bad_request_bodies(body, problem):
    err = refused(lambda: authority.parse_join(body))
    assert err.reason == "bad_request" and problem in err.detail and err.status == 400


def _logged_cert(ca, ident, at=T0):
    cert = pki.issue(ca, ident, pki.generate_key().public_key(), now=at)
    event = records.issued(cert, ca.certificate, how="offline", requested_by="t")
    return cert, Logged(new_event(event), "t", 0, 0, int(at.timestamp() * 1000))


def test_renewal_keeps_the_identity(ca):
    ident = spiffe.sidecar("mesh.local", "reviews", "r1")
    cert, ev = _logged_cert(ca, ident)
    got, _csr, old = authority.check_renewal(ca, fold_many(EMPTY, [ev]), cert, csr_pem(), now=T0 + timedelta(hours=1))
    assert got == ident and old == pki.serial_hex(cert)


def test_renewal_refusals(ca):
    ident = spiffe.sidecar("mesh.local", "reviews", "r1")
    cert, ev = _logged_cert(ca, ident)
    later = T0 + timedelta(hours=1)
    reg = fold_many(EMPTY, [ev])
    assert refused(lambda: authority.check_renewal(ca, reg, None, csr_pem(), now=later)).reason == "no_client_certificate"
    assert refused(lambda: authority.check_renewal(ca, EMPTY, cert, csr_pem(), now=later)).reason == "not_issued"
    assert refused(lambda: authority.check_renewal(ca, reg, cert, csr_pem(), now=T0 + timedelta(hours=25))).reason == "expired"
    revoke = records.revoked(ident.uri, pki.serial_hex(cert), reason="stolen", revoked_by="ops")
    reg2 = fold_many(reg, [Logged(new_event(revoke), "t", 0, 1, MS0 + 1000)])
    err = refused(lambda: authority.check_renewal(ca, reg2, cert, csr_pem(), now=later))
    assert (err.reason, err.status) == ("revoked", 403) and "stolen" in err.detail
    other = pki.create_root("other.mesh", now=T0)
    foreign = pki.issue(other, spiffe.sidecar("other.mesh", "reviews", "r1"), pki.generate_key().public_key(), now=T0)
    assert refused(lambda: authority.check_renewal(ca, reg, foreign, csr_pem(), now=later)).reason == "other_trust_domain"
    assert refused(lambda: authority.check_renewal(ca, reg, cert, "junk", now=later)).reason == "malformed"


def test_refusal_body_names_the_reason():
    assert orjson.loads(orjson.dumps(Refused("used", "again").body())) == {"error": "used", "detail": "again"}
