"""A Kafka node cut off, not killed (issue 15, item 2): no acknowledged event lost, no split-brain write.

Three nodes, each in its own network namespace (``tests.support.netns``: veth pairs on one bridge).
While registrations are appended at a steady rate, the leader of ``meshlog.registrations`` is cut off
from the other two nodes — blackhole routes, its process untouched and still reachable by the
producer, so it believes it leads — and restored a few seconds later. Afterwards every acknowledged
append is in the log at the very offset its acknowledgement named (a write the cut-off leader
acknowledged and the new leader then overwrote would show here), no event is logged twice, and the
cut-off node rejoins the in-sync replicas without a restart. The stall is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from events import topics
from events.admin import ensure_topics
from meshlog.kafka_local import LocalCluster
from meshlog.procs import wait_until
from tests.integration.test_kafka_cluster_faults import churn_appends, leader_of, logged_with_offsets
from tests.support import netns

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BEFORE_CUT_S, CUT_S, AFTER_RESTORE_S = 3.0, 8.0, 6.0
WAIT_S = 120.0


@pytest.fixture(scope="module")
def partitioned_cluster():
    why = netns.available()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    spaces = netns.Netns(3)
    cluster = LocalCluster(3, hosts=spaces.hosts, netns=spaces.names, start_timeout=240.0)
    try:
        cluster.start()
        assert asyncio.run(ensure_topics(cluster.bootstrap)).consistent
        yield cluster, spaces
    finally:
        try:
            cluster.stop()
        finally:
            spaces.close()


def test_a_leader_cut_off_from_the_others_loses_no_acknowledged_write_and_rejoins(partitioned_cluster):
    cluster, spaces = partitioned_cluster
    bootstrap = cluster.bootstrap
    leader, isr = asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))
    assert isr == [1, 2, 3]
    pid = cluster.node(leader).pid
    marks: dict[str, float] = {}

    async def cut_then_restore() -> None:  # on its own clock: stalled appends must not delay it
        await asyncio.sleep(BEFORE_CUT_S)
        await asyncio.to_thread(spaces.cut, leader)
        marks["cut"] = time.monotonic()
        await asyncio.sleep(CUT_S)
        await asyncio.to_thread(spaces.restore, leader)
        marks["restored"] = time.monotonic()

    churn = churn_appends(bootstrap)

    async def churn_through_the_cut() -> None:
        await asyncio.gather(churn.run(BEFORE_CUT_S + CUT_S + AFTER_RESTORE_S), cut_then_restore())

    try:
        asyncio.run(churn_through_the_cut())
    finally:
        if leader in spaces.cut_off:
            spaces.restore(leader)
    assert {"cut", "restored"} <= set(marks)
    new_leader = asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))[0]

    # the cut-off node was never restarted: it rejoins the in-sync replicas by itself
    wait_until(lambda: asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))[1] == [1, 2, 3], WAIT_S,
               f"node {leader} to rejoin the in-sync replicas", interval=0.5)
    rejoined = time.monotonic() - marks["restored"]
    assert cluster.node(leader).is_running() and cluster.node(leader).pid == pid

    logged = asyncio.run(logged_with_offsets(bootstrap))
    at = {event_id: where for event_id, _key, where in logged}  # (partition, offset)
    assert len(at) == len(logged), "an event is in the log twice"
    missing = set(churn.acked) - set(at)
    assert not missing, f"{len(missing)} of {len(churn.acked)} acknowledged appends are not in the log"
    moved = {e for e, where in churn.where.items() if at[e] != where}
    assert not moved, f"{len(moved)} acknowledged appends are not at the offset acknowledged (split brain)"

    acks = sorted(churn.acked.values())
    during = [a for a in acks if a > marks["cut"]]
    before = [a for a in acks if a <= marks["cut"]]
    stall = (during[0] if during else time.monotonic()) - (before[-1] if before else marks["cut"])
    print(f"\ncut-off leader {leader} (leader after: {new_leader}): acked={len(acks)} unacknowledged={churn.failed} stall_s={stall:.2f} "
          f"first_ack_after_cut_s={(during[0] - marks['cut']) if during else float('nan'):.2f} "
          f"cut_s={marks['restored'] - marks['cut']:.1f} rejoin_isr_after_restore_s={rejoined:.2f}")
