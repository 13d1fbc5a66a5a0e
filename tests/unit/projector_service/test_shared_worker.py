"""A projector worker in a group (``projector run --group``), without a broker: the rebalance callbacks are
called as the consumer group would call them.

What it publishes follows its shards: nothing before an assignment, only its keys after one, nothing
between a revocation and the next assignment (and the gap is published on the assignment), and every
record of a gained shard at once, from its folded state.
"""

from __future__ import annotations

from events import topics
from events import types as t
from projector import naming
from projector.publisher import parse_resource_key
from projector.sharding import Ownership

from .helpers import FakeProducer, Log, registered
from .test_service import close, make

SHARDS = 12
NODES = [f"node-{i}" for i in range(12)]


def a_mesh() -> Log:
    log = Log()
    log.append(registered("db", "db-1"))
    for i, node in enumerate(NODES):
        log.append(registered("api", f"api-{i}", node, deps=("db",)))
    return log


def grouped(tmp_path, producer):
    svc = make(tmp_path, producer, group="g")
    svc.ownership = Ownership(frozenset(), SHARDS)  # as _join_group leaves it, before the first assignment
    return svc


async def owning_everything(tmp_path):
    """A grouped worker that folded the mesh and was assigned every shard (and published them)."""
    log, producer = a_mesh(), FakeProducer()
    svc = grouped(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    await svc._shards_assigned(set(range(SHARDS)))
    await svc._reconcile()
    return log, producer, svc


def memberships(producer: FakeProducer) -> set[str]:
    return {s.key.decode() for s in producer.to(topics.VIEW_MEMBERSHIP)}


def owner_view(shards) -> Ownership:
    return Ownership(frozenset(shards), SHARDS)


async def test_a_worker_publishes_nothing_before_its_assignment_then_only_its_shards_keys(tmp_path):
    log, producer = a_mesh(), FakeProducer()
    svc = grouped(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    assert producer.sent == []  # in the group, owning nothing yet

    mine = set(range(0, 6))
    await svc._shards_assigned(mine)
    await svc._reconcile()  # the loop does this when idle after an assignment
    own = owner_view(mine)
    expected = {n for n in NODES if own.owns_node(n)}
    assert expected and memberships(producer) == expected
    assert all(own.owns_resource(parse_resource_key(s.key)) for s in producer.to(topics.VIEW_RESOURCES))
    assert svc.shards_changed.is_set() and not svc._gained
    close(svc)


async def test_a_worker_renders_the_nodes_of_its_shards_only_and_follows_its_assignments(tmp_path):
    log, producer = a_mesh(), FakeProducer()
    svc = grouped(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    assert svc._rendered.membership == {}  # owning nothing yet: the shared bodies only
    mine = set(range(0, 6))
    await svc._shards_assigned(mine)
    await svc._reconcile()
    own = owner_view(mine)
    assert set(svc._rendered.membership) == {n for n in NODES if own.owns_node(n)}
    per_node = {rk for rk in svc._rendered.resources if naming.node_of(rk[1]) is not None}
    assert per_node and all(own.owns_resource(rk) for rk in per_node)
    await svc._shards_revoked(mine)
    await svc._shards_assigned(set(range(SHARDS)))  # every shard: the other half's nodes are rendered now
    await svc._reconcile()
    assert set(svc._rendered.membership) == set(NODES)
    assert memberships(producer) == set(NODES)
    close(svc)


async def test_between_revocation_and_assignment_nothing_is_published_and_the_gap_follows(tmp_path):
    log, producer, svc = await owning_everything(tmp_path)
    producer.sent.clear()

    await svc._shards_revoked(set(range(SHARDS)))
    # db's balancing policy: its cluster, which every node names with its version, changes
    log.append(t.DestinationPolicyUpserted(service="db", revision=1, lb_policy="least_request"))
    await svc.process(log.records[topics.RULES])
    assert producer.sent == []  # paused: the shards may be someone else's by now

    kept = set(range(0, 6))
    await svc._shards_assigned(kept)  # kept half, lost half
    await svc._reconcile()
    own = owner_view(kept)
    # the cluster of db changed: the memberships of the kept shards' nodes move, and only those
    assert memberships(producer) == {n for n in NODES if own.owns_node(n)}
    assert not [s for s in producer.to(topics.VIEW_RESOURCES) if not own.owns_resource(parse_resource_key(s.key))]
    close(svc)


async def test_a_gained_shard_is_published_in_full_even_if_this_worker_published_it_before(tmp_path):
    _log, producer, svc = await owning_everything(tmp_path)
    assert memberships(producer) == set(NODES)

    await svc._shards_revoked(set(range(SHARDS)))
    await svc._shards_assigned(set(range(0, 6)))
    await svc._reconcile()
    await svc._shards_revoked(set(range(0, 6)))
    producer.sent.clear()
    await svc._shards_assigned(set(range(SHARDS)))  # shards 6-11 come back: another worker had them meanwhile
    assert svc._gained == frozenset(range(6, 12))
    await svc._reconcile()
    gained = owner_view(range(6, 12))
    # nothing changed in the log, yet every record of the gained shards goes out again (and nothing else)
    assert memberships(producer) == {n for n in NODES if gained.owns_node(n)}
    assert {parse_resource_key(s.key) for s in producer.to(topics.VIEW_RESOURCES)} == {
        rk for rk in svc._rendered.resources if gained.owns_resource(rk)}
    close(svc)


async def test_without_a_group_the_worker_owns_everything(tmp_path):
    log, producer = a_mesh(), FakeProducer()
    svc = make(tmp_path, producer)
    assert svc.ownership.everything and svc._records_decisions()
    await svc.process(log.records[topics.REGISTRATIONS])
    assert memberships(producer) == set(NODES)
    close(svc)


def test_the_group_flags_reach_the_config_and_bad_values_are_refused(tmp_path, capsys):
    import pytest as _pytest

    from projector import cli

    args = cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path), "--group", "meshlog-projector",
                                          "--worker-id", "w1", "--session-timeout", "20"])
    cfg = cli.config_from_args(args, "test:9092")
    assert (cfg.group, cfg.worker_id, cfg.session_timeout_s) == ("meshlog-projector", "w1", 20.0)
    alone = cli.config_from_args(cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path)]), "test:9092")
    assert alone.group is None  # the default: one worker publishes everything
    for bad in (["--group", "a b"], ["--session-timeout", "2"]):
        with _pytest.raises(SystemExit) as exited:
            cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path), *bad])
        assert exited.value.code == 2
        assert bad[0] in capsys.readouterr().err
