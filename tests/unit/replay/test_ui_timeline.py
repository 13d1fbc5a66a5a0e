"""The console's timeline index: bucket counts by bisection, exact bounds, points only when few."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import new_event
from replay.ui.console import Console
from replay.ui.timeline import DEAD_LETTER, OTHER_SERVICES, TimelineIndex, event_kind, event_service
from tests.unit.replay.fake_consumer import FakeConsumer, Rec


def index_of(events: list[tuple[int, str, str]]) -> TimelineIndex:
    idx = TimelineIndex()
    for i, (ts, kind, service) in enumerate(events):
        idx.add(ts, kind, service, "meshlog.health", 0, i)
    return idx


@pytest.mark.parametrize("seed", range(20))
def test_bucket_counts_equal_counting_each_event(seed):
    rnd = random.Random(seed)
    events = sorted((rnd.randint(0, 10_000), rnd.choice("abc"), rnd.choice(["s1", "s2", "s3", ""]))
                    for _ in range(rnd.randint(0, 400)))
    idx = index_of(events)
    lo, hi = sorted((rnd.randint(-100, 10_100), rnd.randint(-100, 10_100)))
    n = rnd.randint(1, 50)
    doc = idx.window(lo, hi, n)
    width = doc["width_ms"]
    want: dict[str, list[int]] = {}
    for ts, kind, _svc in events:
        if lo <= ts <= hi:
            want.setdefault(kind, [0] * doc["buckets"])[(ts - lo) // width] += 1
    assert {r["kind"]: r["counts"] for r in doc["by_kind"]} == want
    assert doc["total"] == sum(lo <= ts <= hi for ts, _k, _s in events)
    assert sum(r["total"] for r in doc["by_service"]) == doc["total"]
    assert doc["buckets"] <= n and (doc["buckets"] - 1) * width <= hi - lo < doc["buckets"] * width


def test_window_bounds_are_inclusive_and_points_come_in_log_order():
    idx = index_of([(100, "a", "s"), (200, "b", "s"), (300, "a", "t")])
    doc = idx.window(100, 300, 3)
    assert doc["total"] == 3
    assert [p["timestamp_ms"] for p in doc["points"]] == [100, 200, 300]
    assert idx.window(101, 299, 3)["total"] == 1


def test_a_dense_window_gives_bars_not_points():
    idx = index_of([(i, "a", "s") for i in range(50)])
    assert idx.window(0, 49, 5, max_points=50)["points"] is not None
    assert idx.window(0, 49, 5, max_points=49)["points"] is None


def test_only_the_busiest_services_get_a_row_of_their_own():
    events = [(i, "a", f"s{i % 5}") for i in range(100)] + [(200 + i, "a", "busy") for i in range(50)]
    doc = index_of(sorted(events)).window(0, 1000, 10, services=2)
    names = [r["service"] for r in doc["by_service"]]
    assert names[0] == "busy" and names[-1] == OTHER_SERVICES and len(names) == 3
    assert sum(r["total"] for r in doc["by_service"]) == 150


def test_a_late_fact_is_inserted_in_time_order():
    idx = index_of([(100, "a", "s"), (300, "a", "s")])
    idx.add(200, "a", "s", "meshlog.rejections", 0, 7)
    assert [p["timestamp_ms"] for p in idx.window(0, 400, 1)["points"]] == [100, 200, 300]


def test_bad_windows_are_refused():
    idx = TimelineIndex()
    with pytest.raises(ValueError):
        idx.window(10, 9, 5)
    with pytest.raises(ValueError):
        idx.window(0, 9, 0)


def test_kinds_and_services_of_events():
    h = t.InstanceHealthChanged(service="reviews", instance_id="r1", status="unhealthy", observer="c")
    assert event_kind(h, h.TYPE) == "instance.health_changed:unhealthy"
    assert event_service(h) == "reviews"
    rule = t.RouteRuleDeleted(host="web", revision=2)
    assert event_kind(rule, rule.TYPE) == rule.TYPE and event_service(rule) == "web"


def test_the_console_indexes_the_log_once_then_only_what_was_appended():
    reg = TopicPartition(topics.REGISTRATIONS, 0)
    health = TopicPartition(topics.HEALTH, 0)
    rules = TopicPartition(topics.RULES, 0)
    logs = {reg: [], health: [], rules: []}
    for i in range(5):
        payload = t.InstanceRegistered(service="reviews", instance_id=f"r{i}", address="10.0.0.1", port=80 + i)
        logs[reg].append(Rec(reg.topic, 0, i, 1000 + i, encode(new_event(payload))))
    logs[health].append(Rec(health.topic, 0, 0, 1002, b"{not an event"))
    consumer = FakeConsumer(logs, random.Random(3))
    console = Console(consumer, refresh_s=0, verify_events=False)  # unsigned test events

    async def go():
        await console.refresh()
        first = console.index.window(0, 5000, 1)
        payload = t.InstanceDeregistered(service="reviews", instance_id="r0")
        logs[reg].append(Rec(reg.topic, 0, 5, 1010, encode(new_event(payload))))
        await console.refresh()
        return first, console.index.window(0, 5000, 1)

    first, second = asyncio.run(go())
    assert {r["kind"]: r["total"] for r in first["by_kind"]} == {"instance.registered": 5, DEAD_LETTER: 1}
    assert {r["kind"]: r["total"] for r in second["by_kind"]} == {
        "instance.registered": 5, "instance.deregistered": 1, DEAD_LETTER: 1}
    assert console.index.count == 7  # nothing indexed twice


def test_rejected_rules_identity_events_and_the_proxies_nacks_are_on_the_timeline_too():
    from datetime import datetime, timedelta, timezone

    reg = TopicPartition(topics.REGISTRATIONS, 0)
    rej = TopicPartition(topics.REJECTIONS, 0)
    ids = TopicPartition(topics.IDENTITIES, 0)
    logs = {TopicPartition(spec.name, p): [] for spec in topics.EVENT_TOPICS for p in range(spec.partitions)}
    payload = t.InstanceRegistered(service="reviews", instance_id="r1", address="10.0.0.1", port=80)
    logs[reg] = [Rec(reg.topic, 0, 0, 1000, encode(new_event(payload)))]
    rejected = t.RuleRejected(kind="route_rule", name="reviews", revision=1, reason="stale revision",
                              source_topic=topics.RULES, source_partition=0, source_offset=3)
    logs[rej] = [Rec(rej.topic, 0, 0, 1001, encode(new_event(rejected)))]
    revoked = t.IdentityRevoked(spiffe_id="spiffe://mesh.local/sidecar/reviews/r1", serial="0a1b", reason="leak",
                                revoked_by="ops")
    redeemed = t.JoinTokenRedeemed(token_id="t" * 16, service="ratings", instance_id="ra-1",
                                   expires_at=datetime.now(timezone.utc) + timedelta(minutes=5), claim_id="c" * 16)
    logs[ids] = [Rec(ids.topic, 0, 0, 1002, encode(new_event(revoked))),
                 Rec(ids.topic, 0, 1, 1003, encode(new_event(redeemed))),
                 Rec(ids.topic, 0, 2, 1004, b"garbage")]
    sync = TopicPartition(topics.SYNC, 0)
    nacked = t.ProxyNacked(node="web-1", gateway="gw-1", stream_id="s1",
                           type_url="type.googleapis.com/envoy.config.route.v3.RouteConfiguration", nonce="7",
                           rejected={"web-1~outbound": "abc"}, reason="<b>bad route</b>")
    logs[sync] = [Rec(sync.topic, 0, 0, 1005, encode(new_event(nacked)))]
    console = Console(FakeConsumer(logs, random.Random(5)), refresh_s=0, verify_events=False)

    async def go():
        await console.refresh()
        return console.index.window(0, 5000, 1), await console.events(0, 5000, service="reviews")

    doc, events = asyncio.run(go())
    rows = {(p["kind"], p["service"]) for p in doc["points"]}
    assert rows == {("instance.registered", "reviews"), ("rule.rejected", "reviews"),
                    ("identity.revoked", "reviews"), ("join_token.redeemed", "ratings"), ("sync.nacked", "node web-1")}
    assert [e["kind"] for e in events["events"]] == ["instance.registered", "rule.rejected", "identity.revoked"]
    assert events["events"][1]["reason"] == "stale revision"


def test_a_refused_subscription_is_a_rejection_filed_under_its_service():
    """The rejections topic carries rule refusals and subscription refusals; a subscription has no rule name
    (before: the console's index raised AttributeError and every /api call answered 500)."""
    from replay.ui.console import _support_kind
    from replay.ui.timeline import REJECTED
    from tests.unit.replay.fake_consumer import Rec

    refused = new_event(t.SubscriptionRejected(
        action="subscribe", problem="unknown_service", service="web", instance_id="web-1", dependency="ratings",
        reason="ratings never had an instance", source_topic=topics.REGISTRATIONS, source_partition=0,
        source_offset=7))
    record = Rec(topics.REJECTIONS, 0, 0, 1_000, encode(refused), refused.key.encode())
    kind, service = _support_kind(record)
    assert (kind, service) == (REJECTED, "web")


def test_an_instant_the_console_caches_does_not_keep_its_decoder():
    """A rebuild hands its decoder (memo and all) on to a walk from it; the console keeps up to
    CACHED_INSTANTS rebuilds for its whole life, so it lets their decoders go."""
    logs = {TopicPartition(spec.name, p): [] for spec in topics.EVENT_TOPICS for p in range(spec.partitions)}
    reg = TopicPartition(topics.REGISTRATIONS, 0)
    for i in range(3):
        payload = t.InstanceRegistered(service="reviews", instance_id=f"r{i}", address="10.0.0.1", port=80 + i)
        logs[reg].append(Rec(reg.topic, 0, i, 1000 + i, encode(new_event(payload))))
    console = Console(FakeConsumer(logs, random.Random(4)), refresh_s=0, verify_events=False, use_snapshot=False)

    async def go():
        async with console.lock:
            return await console._rebuilt(1002, what="at")

    rebuilt = asyncio.run(go())
    assert rebuilt.folded == 3 and rebuilt.decoder is None
