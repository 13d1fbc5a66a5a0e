"""identity.tokens: signed, service-bound, expiring join tokens; every refusal has its reason."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from identity import pki, tokens
from identity.tokens import TokenRefused

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ca():
    return pki.create_root("mesh.local", now=T0)


def _reason(fn) -> str:
    with pytest.raises(TokenRefused) as err:
        fn()
    return err.value.reason


def test_mint_and_read(ca):
    text = tokens.mint(ca, "reviews", now=T0, ttl=timedelta(minutes=10))
    token = tokens.read(text, ca.certificate, now=T0 + timedelta(minutes=9))
    assert (token.service, token.domain) == ("reviews", "mesh.local")
    assert token.expires_at == T0 + timedelta(minutes=10)
    assert len(token.token_id) == 24
    assert tokens.read(tokens.mint(ca, "reviews", now=T0), ca.certificate, now=T0).token_id != token.token_id


def test_expired(ca):
    text = tokens.mint(ca, "reviews", now=T0, ttl=timedelta(minutes=10))
    assert _reason(lambda: tokens.read(text, ca.certificate, now=T0 + timedelta(minutes=10))) == "expired"


def test_wrong_service(ca):
    token = tokens.read(tokens.mint(ca, "reviews", now=T0), ca.certificate, now=T0)
    tokens.check_service(token, "reviews")
    assert _reason(lambda: tokens.check_service(token, "ratings")) == "wrong_service"


def test_signed_by_another_ca_or_tampered(ca):
    other = pki.create_root("mesh.local", now=T0)
    forged = tokens.mint(other, "reviews", now=T0)
    assert _reason(lambda: tokens.read(forged, ca.certificate, now=T0)) == "bad_signature"
    # swap in claims for another service, keep the signature
    head, _claims, sig = tokens.mint(ca, "reviews", now=T0).split(".")
    _h, other_claims, _s = tokens.mint(ca, "ratings", now=T0).split(".")
    assert _reason(lambda: tokens.read(f"{head}.{other_claims}.{sig}", ca.certificate, now=T0)) == "bad_signature"


def test_other_trust_domain(ca):
    other = pki.create_root("other.mesh", now=T0)
    # signed by our key but claiming another domain: only possible with our key, still refused
    foreign = tokens.mint(pki.CertificateAuthority("other.mesh", other.certificate, ca.key), "reviews", now=T0)
    assert _reason(lambda: tokens.read(foreign, ca.certificate, now=T0)) == "other_trust_domain"


@pytest.mark.parametrize("text", ["", "mlj1", "mlj1.a.b", "jwt.x.y", "mlj1.!!!.???", "x" * 5000])
def test_malformed(ca, text):
    assert _reason(lambda: tokens.read(text, ca.certificate, now=T0)) in ("malformed", "bad_signature")


def test_mint_validates_inputs(ca):
    with pytest.raises(ValueError, match="ttl"):
        tokens.mint(ca, "reviews", now=T0, ttl=timedelta(days=2))
    with pytest.raises(ValueError, match="service"):
        tokens.mint(ca, "Not A Service", now=T0)


@given(st.text(max_size=300))
def test_read_is_total(text):
    ca = _CA
    try:
        tokens.read(text, ca.certificate, now=T0)
    except TokenRefused as exc:
        assert exc.reason in tokens.REASONS


_CA = pki.create_root("mesh.local", now=T0)
