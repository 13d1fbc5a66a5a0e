"""Subscription churn, projector side: every node subscribes to one new service at once.

In process, no Kafka: the bench mesh of ``bench/projector.py`` (services x
instances, every instance a sidecar node declaring 3 dependencies) is folded
and rendered; then one ``dependency.subscribed`` per node (each to a service
it does not depend on yet) is folded in one batch, and ``render_all`` runs
incrementally from the previous render, as the live projector does per batch.
Then the same for the matching ``dependency.unsubscribed`` events.

Printed (JSON): fold time of the batch, incremental render time, how many
resources and nodes changed (what the publisher writes and the gateways fan
out), and, for comparison, the same batch size of health transitions.

Not measured here: the Kafka round trip, the gateways and Envoy (the
integration story ``tests/integration/test_subscribe_runtime.py`` prints the
end-to-end time of one subscription through the sidecar's API).

Usage: python bench/subscription_churn.py [--services 200] [--instances 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.projector import envelope, flaps, registrations  # noqa: E402
from events import topics  # noqa: E402
from events import types as t  # noqa: E402
from events.envelope import Logged  # noqa: E402
from projector.fold import fold_many  # noqa: E402
from projector.render import render_all  # noqa: E402
from projector.state import empty_state  # noqa: E402


def logged(payloads: list[t.Payload], topic: str, start_ts: int) -> list[Logged]:
    return [Logged(envelope(p, i), topic, 0, i, start_ts + i) for i, p in enumerate(payloads)]


def step(state, previous, events: list[Logged]) -> tuple:
    t0 = time.perf_counter()
    new, decisions = fold_many(state, events)
    t1 = time.perf_counter()
    rendered = render_all(new, previous=previous)
    t2 = time.perf_counter()
    return new, rendered, {
        "events": len(events), "refused": len(decisions), "fold_ms": round((t1 - t0) * 1000, 1),
        "render_ms": round((t2 - t1) * 1000, 1), "changed_resources": len(rendered.changed),
        "removed_resources": len(rendered.removed), "changed_nodes": len(rendered.changed_nodes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--instances", type=int, default=5)
    args = parser.parse_args()
    regs = registrations(args.services, args.instances, "c")
    state, _ = fold_many(empty_state(), logged(regs, topics.REGISTRATIONS, 1_000_000))
    base = render_all(state)
    rnd = random.Random(11)
    names = [f"c-svc-{s}" for s in range(args.services)]
    subs, unsubs = [], []
    for reg in regs:
        dep = rnd.choice([n for n in names if n != reg.service and n not in reg.depends_on])
        subs.append(t.DependencySubscribed(service=reg.service, instance_id=reg.instance_id, dependency=dep))
        unsubs.append(t.DependencyUnsubscribed(service=reg.service, instance_id=reg.instance_id, dependency=dep))
    s1, r1, subscribe = step(state, base, logged(subs, topics.REGISTRATIONS, 2_000_000))
    _s2, _r2, unsubscribe = step(s1, r1, logged(unsubs, topics.REGISTRATIONS, 3_000_000))
    _s3, _r3, health = step(state, base, logged(flaps(args.services, args.instances, "c", len(regs), 5),
                                                topics.HEALTH, 2_000_000))
    print(json.dumps({"nodes": len(base.membership), "resources": len(base.resources),
                      "subscribe_all": subscribe, "unsubscribe_all": unsubscribe,
                      "health_batch_same_size": health}, indent=1))


if __name__ == "__main__":
    main()
