"""replay.identities: documents and tables drawn from identity.registry's fold; client text escaped."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from rich.console import Console

from events.envelope import Logged, new_event
from identity import pki, records, spiffe, tokens
from identity.registry import EMPTY, fold_many
from replay import identities

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MS0 = int(T0.timestamp() * 1000)
CA = pki.create_root("mesh.local", now=T0 - timedelta(days=1))


def lg(payload, ms, offset=0):
    return Logged(new_event(payload), payload.TOPIC, 0, offset, ms)


def cert_event(ident):
    cert = pki.issue(CA, ident, pki.generate_key().public_key(), now=T0)
    return records.issued(cert, CA.certificate, how="offline", requested_by="ops\x1b[2J")


def test_held_document_filters_by_service_and_lists_revocations():
    a = cert_event(spiffe.sidecar("mesh.local", "reviews", "r1"))
    b = cert_event(spiffe.sidecar("mesh.local", "details", "d1"))
    c = cert_event(spiffe.projector("mesh.local"))
    rev = records.revoked(b.spiffe_id, b.serial, reason="gone", revoked_by="ops")
    reg = fold_many(EMPTY, [lg(a, MS0), lg(b, MS0), lg(c, MS0), lg(rev, MS0 + 1000)])
    doc = identities.held_document(reg, MS0 + 500)
    assert {h["serial"] for h in doc["held"]} == {a.serial, b.serial, c.serial}
    later = identities.held_document(reg, MS0 + 2000)
    assert {h["serial"] for h in later["held"]} == {a.serial, c.serial}
    assert [r["serial"] for r in later["revoked"]] == [b.serial]
    only = identities.held_document(reg, MS0 + 500, service="reviews")
    assert [h["spiffe_id"] for h in only["held"]] == [a.spiffe_id]


def test_log_entries_cover_issue_revoke_and_redeem_and_escape_on_print():
    a = cert_event(spiffe.sidecar("mesh.local", "reviews", "r1"))
    rev = records.revoked(a.spiffe_id, a.serial, reason="bad\x1b[31mreason\n", revoked_by="ops")
    token = tokens.read(tokens.mint(CA, "reviews", now=T0), CA.certificate, now=T0)
    red = records.redeemed(token, "r1", "c" * 24)
    entries = identities.log_entries([lg(red, MS0, 0), lg(a, MS0, 1), lg(rev, MS0 + 1, 2)])
    assert [e["type"] for e in entries] == ["join_token.redeemed", "identity.issued", "identity.revoked"]
    assert identities.log_entries([lg(a, MS0)], service="details") == []
    out = io.StringIO()
    identities.print_log_section(Console(file=out, width=300, force_terminal=False), entries)
    text = out.getvalue()
    assert "\x1b" not in text and "\\x1b[31m" in text and a.spiffe_id in text
