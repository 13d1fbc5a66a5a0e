"""identity.registry: who held which identity at an instant, from the identity events alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from events.envelope import Logged, new_event
from identity import pki, records, spiffe, tokens
from identity.registry import EMPTY, fold, fold_many

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MS0 = int(T0.timestamp() * 1000)
HOUR = 3_600_000


@pytest.fixture(scope="module")
def ca():
    return pki.create_root("mesh.local", now=T0 - timedelta(days=1))


def logged(payload, ts_ms: int, offset: int = 0) -> Logged:
    return Logged(new_event(payload), topic=payload.TOPIC, partition=0, offset=offset, timestamp_ms=ts_ms)


def issued(ca, ident, at=T0, lifetime=timedelta(hours=24)):
    cert = pki.issue(ca, ident, pki.generate_key().public_key(), now=at, lifetime=lifetime)
    return cert, records.issued(cert, ca.certificate, how="offline", requested_by="test")


def test_held_between_issue_and_expiry(ca):
    cert, event = issued(ca, spiffe.gateway("mesh.local", "g1"))
    serial = pki.serial_hex(cert)
    reg = fold(EMPTY, logged(event, MS0))
    assert reg.status_at(serial, MS0 - 1) == "not_issued"  # logged later than this instant
    assert reg.status_at(serial, MS0) == "held"
    assert reg.status_at(serial, MS0 + 23 * HOUR) == "held"
    assert reg.status_at(serial, MS0 + 24 * HOUR) == "expired"
    assert [c.serial for c in reg.held_at(MS0 + HOUR)] == [serial]
    assert reg.held_at(MS0 + 25 * HOUR) == []
    held = reg.certificates[serial]
    assert held.spiffe_id == "spiffe://mesh.local/gateway/g1" and held.issuer == "spiffe://mesh.local/ca"
    assert pki.public_key_from_pem(held.public_key).public_numbers() == cert.public_key().public_numbers()


def test_revoked_from_the_revocation_log_time(ca):
    cert, event = issued(ca, spiffe.projector("mesh.local"))
    serial = pki.serial_hex(cert)
    revoke = records.revoked("spiffe://mesh.local/projector", serial, reason="key leaked", revoked_by="ops")
    reg = fold_many(EMPTY, [logged(event, MS0, 0), logged(revoke, MS0 + HOUR, 1)])
    assert reg.status_at(serial, MS0 + HOUR - 1) == "held"
    assert reg.status_at(serial, MS0 + HOUR) == "revoked"
    assert reg.held(serial, MS0 + HOUR - 1).serial == serial and reg.held(serial, MS0 + HOUR) is None
    assert reg.revocation(serial).reason == "key leaked"


def test_order_of_facts_about_one_serial_does_not_matter(ca):
    cert, event = issued(ca, spiffe.projector("mesh.local"))
    serial = pki.serial_hex(cert)
    revoke = records.revoked("spiffe://mesh.local/projector", serial, reason="r", revoked_by="ops")
    a = fold_many(EMPTY, [logged(event, MS0), logged(revoke, MS0 + HOUR)])
    b = fold_many(EMPTY, [logged(revoke, MS0 + HOUR), logged(event, MS0)])
    for t in (MS0, MS0 + HOUR, MS0 + 2 * HOUR):
        assert a.status_at(serial, t) == b.status_at(serial, t)


def test_first_redemption_of_a_token_wins(ca):
    token = tokens.read(tokens.mint(ca, "reviews", now=T0), ca.certificate, now=T0)
    first = records.redeemed(token, "r1", "a" * 24)
    second = records.redeemed(token, "r2", "b" * 24)
    reg = fold_many(EMPTY, [logged(first, MS0, 5), logged(second, MS0, 6)])
    assert reg.token_used(token.token_id)
    assert reg.winner(token.token_id).claim_id == "a" * 24 and reg.winner(token.token_id).offset == 5
    assert not reg.token_used("x" * 24)


def test_fold_is_pure_and_ignores_other_events(ca):
    from events.types import InstanceDeregistered

    cert, event = issued(ca, spiffe.projector("mesh.local"))
    before = fold(EMPTY, logged(event, MS0))
    after = fold(before, logged(InstanceDeregistered(service="a", instance_id="b"), MS0 + 1))
    assert after is before
    again = fold(before, logged(records.revoked(event.spiffe_id, event.serial, reason="r", revoked_by="o"), MS0 + 2))
    assert before.revocation(event.serial) is None and again.revocation(event.serial) is not None
    assert EMPTY.certificates == {}
