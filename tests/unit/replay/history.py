"""A seeded random mesh history (valid payloads), for replay's unit and integration tests.

Services ``<prefix>-s<i>`` with instances; some instances front a sidecar
node ``<prefix>-n<i>-<j>`` depending on other services; then a mix of health
transitions, re-registrations, deregistrations, destination policies and
route rules (canary splits over subsets), including the odd stale revision
(rejected by the fold) and a rule pointing at a service that never registers
(served only once it does — it never does here, so it stays unserved).
"""

from __future__ import annotations

import random
from typing import Iterator

from events import types as t


class RandomHistory:
    def __init__(self, prefix: str, seed: int, *, services: int = 6, instances: int = 3, base_port: int = 20000):
        self.rnd = random.Random(seed)
        self.prefix = prefix
        self.services = [f"{prefix}-s{i}" for i in range(services)]
        self.instances = instances
        self.base_port = base_port
        self.revision: dict[str, int] = {}
        self.has_policy: set[str] = set()
        self.registered: set[tuple[int, int]] = set()
        self.protocol = {s: ("grpc" if i == services - 1 else "http") for i, s in enumerate(self.services)}

    def node(self, s: int, i: int) -> str | None:
        return f"{self.prefix}-n{s}-{i}" if i == 0 else None

    def nodes(self) -> list[str]:
        return [n for s in range(len(self.services)) if (n := self.node(s, 0))]

    def registration(self, s: int, i: int, version: str | None = None) -> t.InstanceRegistered:
        svc = self.services[s]
        node = self.node(s, i)
        deps = tuple(x for k, x in enumerate(self.services) if k != s and (k + s) % 3 != 0)[:3]
        sidecar = None
        if node is not None:
            port = self.base_port + 10 * s
            sidecar = t.SidecarPorts(inbound_port=port + 1, outbound_port=port + 2)
        return t.InstanceRegistered(
            service=svc, instance_id=f"i{i}", address=f"127.0.{s + 1}.{i + 1}", port=self.base_port + 10 * s + 5,
            protocol=self.protocol[svc], node_id=node, sidecar=sidecar, depends_on=deps if node else (),
            labels={"version": version or ("v1" if i % 2 == 0 else "v2"), "zone": f"z{i % 2}"},
        )

    def initial(self) -> Iterator[t.Payload]:
        for s in range(len(self.services)):
            for i in range(self.instances):
                self.registered.add((s, i))
                yield self.registration(s, i)

    def _policy(self, svc: str) -> t.Payload:
        key = f"policy/{svc}"
        rev = self.revision.get(key, 0) + 1
        if self.rnd.random() < 0.1:
            return t.DestinationPolicyUpserted(service=svc, revision=rev + 3)  # stale writer: rejected
        self.revision[key] = rev
        self.has_policy.add(svc)
        return t.DestinationPolicyUpserted(
            service=svc, revision=rev,
            subsets=(t.Subset(name="v1", labels={"version": "v1"}), t.Subset(name="v2", labels={"version": "v2"})),
            lb_policy=self.rnd.choice(("round_robin", "least_request", "random")),
            connect_timeout_ms=self.rnd.choice((250, 1000)),
        )

    def _rule(self, svc: str) -> t.Payload:
        key = f"route/{svc}"
        rev = self.revision.get(key, 0) + 1
        self.revision[key] = rev
        canary = self.rnd.choice((1, 10, 50))
        if self.rnd.random() < 0.1:
            # a destination that never registers: the rule is accepted but not served
            return t.RouteRuleUpserted(host=svc, revision=rev, routes=(
                t.HttpRoute(destinations=(t.WeightedDestination(service=f"{self.prefix}-ghost", weight=100),)),))
        return t.RouteRuleUpserted(host=svc, revision=rev, routes=(
            t.HttpRoute(match=t.RouteMatch(path_prefix="/beta"), destinations=(t.WeightedDestination(subset="v2"),)),
            t.HttpRoute(destinations=(t.WeightedDestination(subset="v1", weight=100 - canary),
                                      t.WeightedDestination(subset="v2", weight=canary)),
                        timeout_ms=self.rnd.choice((500, 2000))),
        ))

    def next(self) -> t.Payload:
        rnd = self.rnd
        s = rnd.randrange(len(self.services))
        i = rnd.randrange(self.instances)
        svc = self.services[s]
        x = rnd.random()
        if x < 0.5:
            return t.InstanceHealthChanged(service=svc, instance_id=f"i{i}",
                                           status=rnd.choice(("healthy", "unhealthy", "draining")), observer="checker")
        if x < 0.7 or (s, i) not in self.registered:
            self.registered.add((s, i))
            return self.registration(s, i, rnd.choice(("v1", "v2")))
        if x < 0.78:
            self.registered.discard((s, i))
            return t.InstanceDeregistered(service=svc, instance_id=f"i{i}")
        if svc not in self.has_policy or x < 0.88:
            return self._policy(svc)
        return self._rule(svc)

    def payloads(self, count: int) -> list[t.Payload]:
        out = list(self.initial())
        while len(out) < count:
            out.append(self.next())
        return out
