"""Projector workers sharing the render (``projector run --group``) against a real broker.

Two workers over the same log, each with its own data dir, share the 12 shards of
``meshlog.projector.shards``: the view topics they produce together equal ``replay --at now``'s
rendering byte for byte; after one is killed with SIGKILL the other takes its shards over (after
the group's session timeout) and the views, with events appended meanwhile, still equal replay.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from events.admin import ensure_topics
from projector.render import render_all
from replay.engine import open_log, rebuild
from tests.integration.test_replay import append, read_views, replay_json
from tests.support.stack import start_projector, wait_until
from tests.unit.replay.history import RandomHistory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:6]
SHARDS = 12
ASSIGNED = re.compile(r"worker \S+: shards \[([0-9, ]*)\] of (\d+)")


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap):
    asyncio.run(ensure_topics(kafka_bootstrap))
    return kafka_bootstrap


def shards_of(worker) -> set[int] | None:
    """The worker's latest assignment, from its log (None before its first)."""
    found = ASSIGNED.findall(worker.log_path.read_text(errors="replace"))
    if not found:
        return None
    listed, of = found[-1]
    assert int(of) == SHARDS
    return {int(x) for x in listed.split(",") if x.strip()}


def took_over(worker) -> int:
    return worker.log_path.read_text(errors="replace").count("took over shards")


def views_equal_replay(bootstrap: str, prefix: str, *, expect_nodes: int) -> str | None:
    """None if the view topics hold exactly what replay at now renders for this test's nodes, else why not."""
    published: dict = {}
    live_resources, live_membership = asyncio.run(read_views(bootstrap, published))
    mine = {n: m for n, m in live_membership.items() if n.startswith(prefix) and m is not None}
    doc = replay_json(bootstrap, "--at", "now")
    replayed = {n["node"]: n["resources"] for n in doc["nodes"] if n["node"].startswith(prefix)}
    if len(replayed) < expect_nodes:
        return f"replay shows {len(replayed)} nodes, expected {expect_nodes}"
    if replayed != mine:
        differ = sorted(n for n in set(replayed) | set(mine) if replayed.get(n) != mine.get(n))
        return f"{len(differ)} memberships differ from replay: {differ[:5]}"

    async def rendered_now():
        async with open_log(bootstrap) as consumer:
            return await rebuild(consumer, int(time.time() * 1000))

    rendered = render_all(asyncio.run(rendered_now()).state)
    for node, membership in mine.items():
        if rendered.membership[node] != membership:
            return f"{node}: membership differs from the in-process render"
        for type_url, names in membership.items():
            for name, version in names.items():
                live = live_resources.get((type_url, name))
                if live != rendered.resources[(type_url, name)] or published[(type_url, name)] != version:
                    return f"{node}: body {type_url} {name} differs from the render"
    # every shared body was published by one worker only (its shard's owner), and every worker names its
    # version alike: the versions the memberships name are those the bodies carry (checked just above)
    return None


def wait_views_equal_replay(bootstrap: str, prefix: str, expect_nodes: int, workers, what: str) -> None:
    why: list[str | None] = [None]

    def equal() -> bool:
        why[0] = views_equal_replay(bootstrap, prefix, expect_nodes=expect_nodes)
        return why[0] is None

    wait_until(equal, 120, f"{what}: views equal replay", interval=1.0,
               on_fail=lambda: f"last difference: {why[0]}\n" + "\n".join(w.log_tail() for w in workers))


def test_two_workers_share_the_views_and_one_takes_over_when_the_other_is_killed(bootstrap, tmp_path):
    history = RandomHistory(f"pw{RUN}", seed=20261130, services=24, instances=2)
    nodes = len(history.nodes())
    asyncio.run(append(bootstrap, history.payloads(300), seed=3))
    group = f"meshlog-projector-test-{RUN}"
    workers = [start_projector(bootstrap, tmp_path, name=f"worker-{i}",
                               extra=["--group", group, "--worker-id", f"w{i}", "--poll-ms", "100"])
               for i in range(2)]
    try:
        def shared() -> bool:
            got = [shards_of(w) for w in workers]
            return (all(got) and got[0].isdisjoint(got[1]) and got[0] | got[1] == set(range(SHARDS))
                    and all(took_over(w) for w in workers))

        wait_until(shared, 120, "two workers sharing the 12 shards", interval=0.5,
                   on_fail=lambda: "\n".join(w.log_tail() for w in workers))
        wait_views_equal_replay(bootstrap, history.prefix, nodes // 3, workers, "two workers")

        # the survivor takes the killed worker's shards over, and publishes what happened meanwhile
        survivor, victim = workers
        before = took_over(survivor)
        victim.kill9()
        asyncio.run(append(bootstrap, history.payloads(150), seed=4))
        wait_until(lambda: shards_of(survivor) == set(range(SHARDS)) and took_over(survivor) > before, 60,
                   "the survivor to take every shard over", interval=0.5, on_fail=survivor.log_tail)
        wait_views_equal_replay(bootstrap, history.prefix, nodes // 3, [survivor], "after the kill")
        assert survivor.alive()
    finally:
        for w in workers:
            w.stop()
