"""One render pass over one MeshState: views (which names a node gets) and
the message of each named resource. See ``projector.render`` for the rules.

A ``Renderer`` caches what several resources share (served rules, virtual
hosts, a node's instance, a service's protocol) for the life of one pass;
make a new one per state.

Every resource is rendered in two steps: ``inputs`` reads the state
(``shared_inputs`` for a service's cluster, endpoints, API listener or route;
``node_inputs`` for a node's own listeners, local cluster and routes), and
``build`` makes the message from those inputs alone. Its version is the hash
of the inputs (``projector.versioning``), so ``version`` names it without
building it.

Invariants:
- ``build`` (``build_shared``, ``build_node``) reads nothing of the state:
  equal inputs give equal bytes, so one version never names two bodies.
- The inputs side imports no protobuf (``projector.addressing`` holds the
  pure helpers it needs); the builders (``render_envoy``, ``mesh_tls``) are
  imported on the first build, so a reader of versions only never loads the
  Envoy API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from events import types as t
from projector import addressing, naming
from projector.state import Instance, MeshState
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS
from projector.versioning import inputs_version, plain

if TYPE_CHECKING:
    from google.protobuf.message import Message


def _builders():
    """The message builders (``render_envoy``, ``mesh_tls``): imported on the first build, so a reader
    that needs only inputs and versions never loads protobuf and the Envoy API."""
    from projector import mesh_tls
    from projector import render_envoy

    return render_envoy, mesh_tls


def _inbound_over_rds(inst: Instance) -> bool:
    """A sidecar whose inbound routes come over RDS: one with a mesh identity (its RBAC policy lives
    there) serving HTTP or gRPC. The others keep their one route inline: nothing in it changes."""
    sc = inst.reg.sidecar
    return sc is not None and sc.trust_domain is not None and inst.reg.protocol != "tcp"


_UNKNOWN = object()


class Renderer:
    """One render pass over one state: caches shared pieces so each is built once."""

    def __init__(self, state: MeshState) -> None:
        self.s = state
        self.problems: set[str] = set()  # from the resources rendered since the last take_problems()
        self.rule_problems: dict[str, str] = {}  # host -> why its rule is not served
        self._served: dict[str, t.RouteRuleUpserted | None] = {}
        self._targets: dict[str, tuple[str, ...]] = {}
        self._vhosts: dict[tuple, tuple] = {}  # (service, port, id(rule), streaming) -> (rule, virtual host)
        self._plain_memo: dict[int, tuple] = {}  # id(event model) -> (model, its JSON as an orjson.Fragment)
        # a node's view and each of its resources ask for its instance and its dependencies' protocols
        self._instances: dict[str, Instance | None] = {}
        self._protocols: dict[str, str] = {}
        self._node_resources: dict[str, dict[tuple[str, str], tuple]] = {}  # ``node_inputs``' memo

    # ------------------------------------------------ mesh facts

    def protocol(self, service: str) -> str:
        got = self._protocols.get(service)
        if got is None:
            meta = self.s.services.get(service)
            got = self._protocols[service] = "http" if meta is None else meta.protocol
        return got

    def served_rule(self, host: str) -> t.RouteRuleUpserted | None:
        if host in self._served:
            return self._served[host]
        rule = self.s.route_rules.get(host)
        if rule is not None:
            wanted = sorted({d.service or host for r in rule.routes for d in r.destinations})
            unknown = [svc for svc in wanted if svc not in self.s.services]
            if unknown:
                self.rule_problems[host] = (
                    f"route rule {host!r} revision {rule.revision} not served (default route instead): "
                    f"destination service {', '.join(repr(u) for u in unknown)} has no registered instances"
                )
                rule = None
        self._served[host] = rule
        return rule

    def host_clusters(self, host: str) -> tuple[str, ...]:
        """The clusters traffic to ``host`` can go to: its own plus its served rule's destinations."""
        got = self._targets.get(host)
        if got is not None:
            return got
        names = {host}
        if self.protocol(host) != "tcp":
            rule = self.served_rule(host)
            if rule is not None:
                for r in rule.routes:
                    for d in r.destinations:
                        if d.weight > 0:
                            names.add(naming.destination_cluster(d.service or host, d.subset))
        got = tuple(sorted(names))
        self._targets[host] = got
        return got

    # ------------------------------------------------ views

    def view(self, node_id: str) -> dict[str, tuple[str, ...]]:
        inst = self._node_inst(node_id)
        if inst is None:
            return {u: () for u in TYPE_URLS}
        reg = inst.reg
        clusters: set[str] = set()
        listeners: list[str] = []
        routes: list[str] = []
        if reg.sidecar is not None:
            listeners += [naming.outbound_listener(node_id), naming.inbound_listener(node_id)]
            routes.append(naming.outbound_route(node_id))
            if _inbound_over_rds(inst):
                routes.append(naming.inbound_route(node_id))
            for dep in inst.dependencies():
                clusters.update(self.host_clusters(dep))
            listeners += [naming.tcp_listener(node_id, svc) for svc, _ in self.tcp_ports(inst)]
            local = [naming.local_cluster(node_id)]
        else:
            for dep in inst.dependencies():
                if self.protocol(dep) == "grpc":
                    listeners.append(naming.api_listener(dep))
                    routes.append(naming.api_route(dep))
                    clusters.update(self.host_clusters(dep))
            local = []
        shared = sorted(clusters)
        return {
            CLUSTER: tuple(sorted(shared + local)),
            ENDPOINT: tuple(shared),
            LISTENER: tuple(sorted(listeners)),
            ROUTE: tuple(sorted(routes)),
        }

    def tcp_ports(self, inst: Instance) -> list[tuple[str, int]]:
        """(service, local port) of the node's TCP dependencies that get a listener."""
        reg = inst.reg
        sc = reg.sidecar
        assert sc is not None
        taken = {reg.port: "the app's own port", sc.inbound_port: "the inbound port", sc.outbound_port: "the outbound port"}
        out = []
        for svc in inst.dependencies():
            if self.protocol(svc) != "tcp":
                continue
            port = self.s.services[svc].port
            if port in taken:
                self.problems.add(
                    f"node {reg.node_id!r}: no TCP listener for {svc!r}: its port {port} is {taken[port]}"
                )
                continue
            taken[port] = f"the TCP port of {svc!r}"
            out.append((svc, port))
        return out

    # ------------------------------------------------ resources by name

    def inputs(self, type_url: str, name: str, node_id: str | None) -> tuple | None:
        """What one named resource's bytes depend on (None: it does not exist); per-node names need their
        node. ``build`` makes the message from these alone; ``inputs_version`` of them is its version."""
        if naming.is_per_node(name):
            return self.node_inputs(type_url, name, node_id)
        return self.shared_inputs(type_url, name)

    def build(self, type_url: str, name: str, inputs: tuple) -> Message:
        """The message of a resource from its ``inputs`` alone (reads nothing of the state)."""
        if naming.is_per_node(name):
            return self.build_node(type_url, name, inputs)
        return self.build_shared(type_url, name, inputs)

    def resource(self, type_url: str, name: str, node_id: str | None) -> Message | None:
        """The message of one named resource; per-node names need their node."""
        inputs = self.inputs(type_url, name, node_id)
        return None if inputs is None else self.build(type_url, name, inputs)

    def version(self, type_url: str, name: str, node_id: str | None) -> str | None:
        """The version of one named resource (None: it does not exist), as ``render_all`` names it: the hash
        of its inputs (``projector.versioning``): nothing is built."""
        inputs = self.inputs(type_url, name, node_id)
        return None if inputs is None else self.inputs_version(type_url, name, inputs)

    def inputs_version(self, type_url: str, name: str, inputs: tuple) -> str:
        """``versioning.inputs_version``, each event model in the inputs encoded once per pass (a served
        rule is in the inputs of every node route depending on its host)."""
        return inputs_version(type_url, name, inputs, self._plain)

    def _plain(self, value):
        got = self._plain_memo.get(id(value))
        if got is None or got[0] is not value:
            # serialized once: a served rule is in the inputs of every node route depending on its host, and
            # orjson embeds a Fragment's bytes as they are, which are what it would write for the dict itself
            got = (value, orjson.Fragment(orjson.dumps(plain(value))))
            self._plain_memo[id(value)] = got  # the model is kept alive with it: its id stays its own
        return got[1]

    # ------------------------------------------------ shared resources: inputs, then bytes from inputs alone

    def shared_inputs(self, type_url: str, name: str) -> tuple | None:
        """What a shared resource's bytes depend on (None: it does not exist); see ``projector.versioning``.

        Everything ``build_shared`` reads of the mesh is in here, so equal inputs give equal bytes, and
        ``versioning.inputs_version`` of them names the body without building it. Problems (a hostname
        endpoint, an undefined subset) are reported here, by every worker alike.
        """
        if type_url == CLUSTER:
            parsed = naming.parse_cluster(name)
            if parsed is None:
                return None
            service = parsed[0]
            meta = self.s.services.get(service)
            return self.protocol(service), self.s.policies.get(service), None if meta is None else meta.trust_domain
        if type_url == ENDPOINT:
            return self.endpoint_rows(name)
        if type_url == LISTENER:
            return () if name in self.s.services else None
        if type_url == ROUTE:
            if name not in self.s.services:
                return None
            return self.served_rule(name), self.protocol(name) == "grpc"
        raise ValueError(f"unknown type url {type_url!r}")

    def build_shared(self, type_url: str, name: str, inputs: tuple) -> Message:
        """The message of a shared resource from its ``shared_inputs`` alone (reads nothing of the state)."""
        E, mesh_tls = _builders()
        if type_url == CLUSTER:
            protocol, policy, trust_domain = inputs
            service = naming.parse_cluster(name)[0]
            tls = None
            if trust_domain is not None:  # its sidecars hold mesh identities: mTLS to them
                tls = mesh_tls.upstream_transport_socket(trust_domain, service)
            return E.eds_cluster(name, protocol, policy, tls)
        if type_url == ENDPOINT:
            return E.load_assignment(name, [(zone, [E.lb_endpoint(*row) for row in rows]) for zone, rows in inputs])
        if type_url == LISTENER:
            return E.api_listener(name, naming.api_route(name))
        if type_url == ROUTE:
            rule, streaming = inputs
            return E.route_configuration(name, [E.virtual_host(name, [name], rule, streaming)])
        raise ValueError(f"unknown type url {type_url!r}")

    def _node_inst(self, node_id: str | None) -> Instance | None:
        if node_id is None:
            return None
        got = self._instances.get(node_id, _UNKNOWN)
        if got is _UNKNOWN:
            got = self._instances[node_id] = self.s.node_instance(node_id)
        return got

    def cluster(self, name: str, node_id: str | None) -> Message | None:
        return self.resource(CLUSTER, name, node_id)

    def endpoints(self, name: str) -> Message | None:
        rows = self.endpoint_rows(name)
        return None if rows is None else self.build_shared(ENDPOINT, name, rows)

    def endpoint_rows(self, name: str) -> tuple | None:
        """A ClusterLoadAssignment's inputs: ((zone, ((address, port, health, weight), ...)), ...) in
        their order in the message; None for a name that is not a service's cluster."""
        parsed = naming.parse_cluster(name)
        if parsed is None:
            return None
        service, subset = parsed
        selector: dict[str, str] | None = None
        if subset is not None:
            policy = self.s.policies.get(service)
            found = [s for s in policy.subsets if s.name == subset] if policy is not None else []
            if not found:
                self.problems.add(f"cluster {name!r}: subset {subset!r} is not defined; served with no endpoints")
                return ()
            selector = found[0].labels
        zones: dict[str, list[tuple[str, int, str, str, int]]] = {}
        instances, effective_health, is_ip = self.s.instances, self.s.effective_health, addressing.is_ip
        for key in self.s.by_service.get(service, ()):
            reg = instances[key].reg
            labels = reg.labels
            if selector is not None and any(labels.get(k) != v for k, v in selector.items()):
                continue
            address = reg.address
            if not is_ip(address):
                self.problems.add(f"instance {key!r}: address {address!r} is not an IP address; left out of EDS")
                continue
            sc = reg.sidecar
            port = sc.inbound_port if sc is not None else reg.port
            row = (address, port, key, effective_health(key), reg.weight)
            zone = labels.get("zone", "") if labels else ""
            rows = zones.get(zone)
            if rows is None:
                zones[zone] = [row]
            else:
                rows.append(row)
        # endpoints sorted by (address, port, instance key: unique, so health and weight never decide) inside
        # zones sorted by name ("" first)
        return tuple((zone, tuple((a, p, h, w) for a, p, _key, h, w in sorted(zones[zone]))) for zone in sorted(zones))

    def listener(self, name: str, node_id: str | None) -> Message | None:
        return self.resource(LISTENER, name, node_id)

    def route(self, name: str, node_id: str | None) -> Message | None:
        return self.resource(ROUTE, name, node_id)

    # ------------------------------------------------ per-node resources: inputs, then bytes from inputs alone

    def node_inputs(self, type_url: str, name: str, node_id: str | None) -> tuple | None:
        """What a per-node resource's bytes depend on (None: the node has no such resource).

        Like ``shared_inputs``: everything ``build_node`` reads is in here (its first item says which of the
        node's resources it is), so equal inputs give equal bytes and their hash names the body unbuilt.
        """
        if node_id is None:
            return None
        got = self._node_resources.get(node_id)  # one node's resources are usually asked for one after another
        if got is None:
            got = self._node_resources[node_id] = self.node_resources(node_id)
        return got.get((type_url, name))

    def node_resources(self, node_id: str) -> dict[tuple[str, str], tuple]:
        """Every per-node resource of ``node_id``: (type_url, name) -> its ``node_inputs``; empty for a node
        with no instance or no sidecar. Worked out on each call (``render_all`` asks once per node: a memo of
        every node would hold about 1.2 kB per node until the pass ends)."""
        inst = self._node_inst(node_id)
        if inst is None or inst.reg.sidecar is None:
            return {}
        reg, sc = inst.reg, inst.reg.sidecar
        local = naming.local_cluster(node_id)
        outbound_route = naming.outbound_route(node_id)
        got: dict[tuple[str, str], tuple] = {(CLUSTER, local): ("local", reg.port, reg.protocol)}
        got[(LISTENER, naming.outbound_listener(node_id))] = ("outbound", sc.outbound_port, outbound_route)
        # what a secure HTTP listener holds depends on the instance alone: its RBAC policy is in its route
        # configuration (the inbound route), so a new caller never needs a new listener
        secure = sc.trust_domain is not None
        principals = route_name = None
        if secure:
            if reg.protocol == "tcp":
                principals = self.inbound_principals(reg.service, sc.trust_domain)
            else:
                route_name = naming.inbound_route(node_id)
        got[(LISTENER, naming.inbound_listener(node_id))] = (
            "inbound", addressing.bind_address(reg.address), sc.inbound_port, local, reg.protocol, secure, principals,
            route_name)
        for svc, port in self.tcp_ports(inst):
            got[(LISTENER, naming.tcp_listener(node_id, svc))] = ("tcp", port, svc)
        if _inbound_over_rds(inst):
            got[(ROUTE, naming.inbound_route(node_id))] = (
                "inbound", local, reg.protocol, self.inbound_principals(reg.service, sc.trust_domain))
        hosts = tuple((d, self.served_rule(d), self.protocol(d) == "grpc")
                      for d in inst.dependencies() if self.protocol(d) != "tcp")
        got[(ROUTE, outbound_route)] = ("outbound", sc.outbound_port, hosts)
        return got

    def build_node(self, type_url: str, name: str, inputs: tuple) -> Message:
        """The message of a per-node resource from its ``node_inputs`` alone (reads nothing of the state)."""
        E, mesh_tls = _builders()
        kind = inputs[0]
        if type_url == CLUSTER:
            _, app_port, protocol = inputs
            return E.static_local_cluster(name, app_port, protocol)
        if type_url == LISTENER:
            if kind == "outbound":
                _, port, route_name = inputs
                return E.outbound_http_listener(name, port, route_name)
            if kind == "inbound":
                _, address, port, local, protocol, secure, principals, route_name = inputs
                tls = rbac = None
                if secure:
                    tls = mesh_tls.downstream_transport_socket()
                    rbac = mesh_tls.rbac_network_filter(principals) if protocol == "tcp" else mesh_tls.rbac_http_filter()
                return E.inbound_listener(name, address, port, local, protocol, tls, rbac, route_name)
            _, port, service = inputs
            return E.outbound_tcp_listener(name, port, service)
        if type_url == ROUTE:
            if kind == "inbound":
                _, local, protocol, principals = inputs
                return E.inbound_route_configuration(name, local, protocol, [mesh_tls.rbac_per_route(principals)])
            _, port, hosts = inputs
            return E.route_configuration(
                name, [*(self._vhost(d, port, rule, streaming) for d, rule, streaming in hosts), E.on_demand_virtual_host()])
        raise ValueError(f"no per-node resource of type url {type_url!r}")

    def inbound_principals(self, service: str, trust_domain: str | None) -> tuple[str, ...] | None:
        """Who a sidecar of ``service`` admits (URI SAN prefixes), or None for a plaintext sidecar.

        Its callers in the dependency graph (declared or subscribed), widened by
        the service's access policy, plus the health checkers (``projector.mesh_tls``).
        """
        if trust_domain is None:
            return None
        policy = self.s.access.get(service)
        callers = set(self.s.caller_services(service))
        if policy is not None:
            callers.update(policy.also)
        return addressing.allowed_principals(trust_domain, callers, policy is not None and policy.allow == "mesh")

    def _vhost(self, service: str, outbound_port: int, rule: t.RouteRuleUpserted | None, streaming: bool):
        """A dependency's virtual host in a node route, built once per pass (many nodes share it)."""
        key = (service, outbound_port, id(rule), streaming)
        got = self._vhosts.get(key)
        if got is None or got[0] is not rule:
            E, _ = _builders()
            vh = E.virtual_host(service, [service, f"{service}:{outbound_port}"], rule, streaming)
            got = self._vhosts[key] = (rule, vh)  # the rule is kept alive with it: its id stays its own
        return got[1]

    def take_problems(self) -> tuple[str, ...]:
        got = tuple(sorted(self.problems))
        self.problems = set()
        return got
