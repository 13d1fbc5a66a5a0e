"""The documents replay prints: plain dicts with a stable, documented shape (``--json``).

Pure functions of a folded ``MeshState`` and what the projector's render made
of it; the text output (``replay.text``) is drawn from the same documents,
so the table and the JSON never disagree. Every document carries
``"format": 1`` and a ``"kind"``; lists are sorted; times are UTC ISO-8601
with milliseconds (``...Z``) next to the epoch milliseconds they came from.

Shapes (``format`` 1):

``kind: "mesh"`` (``replay --at T --json``)::

    {format, kind, at, at_ms, source, filter: {service?},
     services: [{name, protocol, port, instances: [INSTANCE], health: {healthy, unhealthy, draining},
                 trust_domain,             # of its latest registration's sidecar (null: plaintext)
                 callers: [service],       # services depending on it (declared or subscribed): who its RBAC admits
                 access_policy: {revision, allow, also} | null}],   # what an operator opened beyond them
     route_rules: [{host, revision, served, problem, routes}],
     destination_policies: [{service, revision, policy}],
     nodes: [{node, instance, service, sidecar, resources: {type_url: {name: version}}}],
     problems: [str]}

    source = {snapshot, events_folded, events_total, cut, first_event,
              undecodable,                  # records skipped as undecodable (after the snapshot used)
              undecodable_dead_lettered?}   # how many of them the dead-letter topic records (when any)

    INSTANCE = {service, instance_id, address, port, protocol, labels, weight, health, health_since,
                node_id, sidecar: {inbound_port, outbound_port} | null, depends_on, registered, registered_ms,
                subscriptions: [{dependency, origin, since, since_ms}]}   # run-time, besides depends_on

``kind: "node"`` (``replay --at T --node N --json``)::

    {format, kind, at, at_ms, source, node, instance: INSTANCE,
     resources: {type_url: {name: version}},            # exactly the node's view membership
     bodies: {type_url: {name: <protobuf JSON>}}}       # only with --full

``kind: "diff"`` (``replay diff``)::

    {format, kind, from, from_ms, to, to_ms, node, events, exact,
     added:   [{type_url, name, version, caused_by: [EVENT]}],
     removed: [{type_url, name, version, caused_by: [EVENT]}],
     changed: [{type_url, name, from_version, to_version, caused_by: [EVENT]}],
     nodes: {added: [node], removed: [node], changed: [node]},
     rejections: [REJECTION], undecodable: [DEAD]}

    # from meshlog.sync (read to the window's end plus a grace):
    #   whole mesh: each EVENT in caused_by carries convergence: {proxies, reached, superseded,
    #               not_reached, last_ack_ms, slowest, median_ms} | null (its step's, as in `log`)
    #   --node N:   each added/removed/changed entry carries accepted: ACCEPTED | null, when N's proxy
    #               accepted the view of the last event that changed it:
    ACCEPTED = {state: "ACCEPTED" | "NOT_YET" | "NO_PROXY", acked_at, acked_ms, after_ms,   # after the event
                via: {topic, partition, offset} | null}   # a later event whose view carried it (superseded)

    (when events were folded in groups, "exact": false: a group's causes are its events about the
     resource's service, at most 20, the last of them carrying "and_before": <events left out>)

``kind: "log"`` (``replay log``)::

    {format, kind, from, from_ms, to, to_ms, filter: {service?, node?}, exact,
     entries: [EVENT + {kind: "event", payload, effect: EFFECT | null, group: int | null,
                        rejection: {reason, recorded} | null}
               | DEAD + {kind: "dead_letter"} | REJECTION + {kind: "rejection"}],
     groups: [{group, events, first: EVENT, last: EVENT, effect: EFFECT}]}

    EFFECT = {changed: [[type_url, name, version]], removed: [[type_url, name]], nodes: [node],
              nodes_removed: [node]}
    (a long window over a large mesh folds events in groups: such an event has "effect": null and
     "group": i, and groups[i] holds the group's effect — restricted to the service with --service;
     with a filter, only events about the service or node itself are listed from a group)

    EVENT = {time, timestamp_ms, topic, partition, offset, type, key, producer, event_id, occurred_at}
            (+ in a log: author: {verified, spiffe_id, serial, problem} — who signed it, verified against
             the identities the log held at its broker time; ``producer`` is only the name it claimed)
    REJECTION = {time, timestamp_ms, kind_of_rule, name, revision, reason, source: {topic, partition, offset}}
                (an event refused for its authorship: kind_of_rule "authorship", name the event's key,
                 + event_type, problem, author)
    DEAD = {time, timestamp_ms, source: {topic, partition, offset}, reason, stage,
            recorded}   # whether the live projector dead-lettered it (found on the dead-letter topic)

``xds`` (``replay --at T --xds --node N``): an Envoy ``/config_dump``
(``envoy.admin.v3.ConfigDump`` as JSON with proto field names): the node's
clusters, endpoints, listeners and routes as dynamic resources, each with
its ``version_info``, plus a ``replay`` key saying which instant and node.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping

from events import types as t
from events.envelope import Logged
from projector import naming
from projector.render import RenderedMesh, node_ids
from projector.render_view import Renderer
from projector.state import Instance, MeshState
from projector.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPE_URLS
from replay.engine import Dropped, Effect, ResourceKey, Step, Versions, iso

FORMAT = 1
GROUP_CAUSES = 20  # at most this many events of one group are listed as causes (inexact walks)

if TYPE_CHECKING:  # a type only: `replay at` does not pay for proxysync's imports (its start-up is in every answer)
    from proxysync.convergence import Acceptance

KIND_OF_TYPE = {CLUSTER: "cluster", ENDPOINT: "endpoints", LISTENER: "listener", ROUTE: "route"}


# ---------------------------------------------------------------- building blocks


def instance_doc(state: MeshState, key: str, inst: Instance) -> dict:
    reg = inst.reg
    health = state.effective_health(key)
    h = state.health.get(key)
    return {
        "service": reg.service,
        "instance_id": reg.instance_id,
        "address": reg.address,
        "port": reg.port,
        "protocol": reg.protocol,
        "labels": dict(sorted(reg.labels.items())),
        "weight": reg.weight,
        "health": health,
        "health_since": iso(h.ts) if (h is not None and health != "healthy") else None,
        "node_id": reg.node_id,
        "sidecar": None
        if reg.sidecar is None
        else {"inbound_port": reg.sidecar.inbound_port, "outbound_port": reg.sidecar.outbound_port},
        "depends_on": list(reg.depends_on),
        "registered": iso(inst.ts),
        "registered_ms": inst.ts,
        "subscriptions": [
            {"dependency": sub.dependency, "origin": sub.origin, "since": iso(sub.ts), "since_ms": sub.ts}
            for sub in inst.subscriptions
        ],
    }


def sync_entry(lg: Logged) -> dict:
    """An ACK or NACK from meshlog.sync as a log entry (interleaved with the events by broker time)."""
    p = lg.payload
    acked = lg.envelope.type == "sync.acked"
    return {
        "kind": "ack" if acked else "nack",
        "time": iso(lg.timestamp_ms),
        "timestamp_ms": lg.timestamp_ms,
        "topic": lg.topic,
        "partition": lg.partition,
        "offset": lg.offset,
        "acked_at": lg.envelope.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node": p.node,
        "gateway": p.gateway,
        "type_url": p.type_url,
        "nonce": p.nonce,
        "resources": dict(p.held) if acked else dict(p.rejected),
        "reason": None if acked else p.reason,
    }


def acceptance_doc(a: Acceptance) -> dict:
    """ACCEPTED (``kind: "diff"`` with a node) from ``proxysync.convergence.acceptance``; ``via`` is an event source."""
    return {
        "state": a.state,
        "acked_at": None if a.acked_ms is None else iso(a.acked_ms),
        "acked_ms": a.acked_ms,
        "after_ms": a.after_ms,
        "via": None if a.via is None else dict(zip(("topic", "partition", "offset"), a.via)),
    }


def event_ref(lg: Logged) -> dict:
    env = lg.envelope
    return {
        "time": iso(lg.timestamp_ms),
        "timestamp_ms": lg.timestamp_ms,
        "topic": lg.topic,
        "partition": lg.partition,
        "offset": lg.offset,
        "type": env.type,
        "key": env.key,
        "producer": env.producer,
        "event_id": env.event_id,
        "occurred_at": env.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def rule_destinations(rule: t.RouteRuleUpserted) -> set[str]:
    return {d.service or rule.host for r in rule.routes for d in r.destinations}


_NAMING_ATTRS = ("service", "host", "dependency")
# payload type -> which of _NAMING_ATTRS it has, for the types whose attributes are known from the class (pydantic
# models with extra="forbid", as every payload is): a walk asks this of every event of a long window, and a pydantic
# model answers an attribute it lacks by raising, which cost more than the rest of the question
_ATTRS_OF: dict[type, tuple[str, ...] | None] = {}


def _naming_attrs(cls: type) -> tuple[str, ...] | None:
    """Which of ``_NAMING_ATTRS`` instances of ``cls`` have; None: not known from the class (ask each)."""
    try:
        return _ATTRS_OF[cls]
    except KeyError:
        pass
    fields = getattr(cls, "model_fields", None)
    config = getattr(cls, "model_config", None) or {}
    known = None
    if isinstance(fields, dict) and config.get("extra") == "forbid":
        known = tuple(a for a in _NAMING_ATTRS if a in fields or hasattr(cls, a))
    _ATTRS_OF[cls] = known
    return known


def payload_services(payload: t.Payload) -> set[str]:
    """The services an event is about (its entity, and a route rule's destinations)."""
    out: set[str] = set()
    attrs = _naming_attrs(type(payload))
    for attr in ("service", "host"):
        if attrs is not None and attr not in attrs:
            continue
        value = getattr(payload, attr, None)
        if isinstance(value, str):
            out.add(value)
    if isinstance(payload, t.RouteRuleUpserted):
        out |= rule_destinations(payload)
    if isinstance(payload, t.RuleRejected):
        out.add(payload.name)
    if isinstance(payload, t.EventRefused):  # the refused event's entity: "<service>/<instance>", "route/<host>"
        head, _sep, rest = payload.event_key.partition("/")
        out.add(rest.partition("/")[0] if head in ("route", "policy") else head)
    if attrs is None or "dependency" in attrs:
        dependency = getattr(payload, "dependency", None)  # a subscription is about its dependency too
        if isinstance(dependency, str):
            out.add(dependency)
    return out


# payload type -> the naming attributes that are all ``payload_services`` reads of it, or None for the types it
# reads more of (a route rule's destinations, a rejection's name, a refused event's key) or whose attributes are
# not known from the class
_PLAIN_ATTRS: dict[type, tuple[str, ...] | None] = {}


def _plain_attrs(cls: type) -> tuple[str, ...] | None:
    try:
        return _PLAIN_ATTRS[cls]
    except KeyError:
        pass
    plain = None if issubclass(cls, (t.RouteRuleUpserted, t.RuleRejected, t.EventRefused)) else _naming_attrs(cls)
    _PLAIN_ATTRS[cls] = plain
    return plain


def mentions(payload: t.Payload, service: str) -> bool:
    """``service in payload_services(payload)``, without building the set: a service log asks it of every
    event of its window (most are a health change, about one instance's service)."""
    attrs = _plain_attrs(type(payload))
    if attrs is None:
        return service in payload_services(payload)
    for attr in attrs:
        value = getattr(payload, attr)
        if value == service and isinstance(value, str):
            return True
    return False


def resource_service(key: ResourceKey) -> str | None:
    """The service a shared resource belongs to (None for per-node resources)."""
    type_url, name = key
    if naming.is_per_node(name):
        return None
    if type_url in (CLUSTER, ENDPOINT):
        parsed = naming.parse_cluster(name)
        return parsed[0] if parsed else None
    return name


# ---------------------------------------------------------------- mesh


def services_known(state: MeshState) -> set[str]:
    return set(state.services.keys()) | set(state.route_rules.keys()) | set(state.policies.keys())


def mesh_document(
    state: MeshState,
    rendered: RenderedMesh | None,
    *,
    at_ms: int,
    source: dict,
    service: str | None = None,
) -> dict:
    r = Renderer(state)
    services = []
    for svc in sorted(state.services.keys()):
        if service is not None and svc != service:
            continue
        meta = state.services[svc]
        instances = [instance_doc(state, k, state.instances[k]) for k in sorted(state.by_service.get(svc, ()))]
        counts = {"healthy": 0, "unhealthy": 0, "draining": 0}
        for i in instances:
            counts[i["health"]] += 1
        access = state.access.get(svc)
        services.append(
            {"name": svc, "protocol": meta.protocol, "port": meta.port, "instances": instances, "health": counts,
             "trust_domain": meta.trust_domain, "callers": sorted(state.caller_services(svc)),
             "access_policy": None if access is None else
             {"revision": access.revision, "allow": access.allow, "also": list(access.also)}}
        )
    rules = []
    for host in sorted(state.route_rules.keys()):
        rule = state.route_rules[host]
        if service is not None and service != host and service not in rule_destinations(rule):
            continue
        served = r.served_rule(host) is not None
        rules.append(
            {
                "host": host,
                "revision": rule.revision,
                "served": served,
                "problem": r.rule_problems.get(host),
                "routes": [route.model_dump(mode="json") for route in rule.routes],
            }
        )
    policies = []
    for svc in sorted(state.policies.keys()):
        if service is not None and svc != service:
            continue
        p = state.policies[svc]
        policies.append(
            {"service": svc, "revision": p.revision, "policy": p.model_dump(mode="json", exclude={"service", "revision"})}
        )
    nodes = []
    for node in node_ids(state):
        inst = state.node_instance(node)
        if inst is None:
            continue
        reg = inst.reg
        if service is not None and reg.service != service and service not in inst.dependencies():
            continue
        if rendered is not None:
            resources = rendered.membership.get(node, {u: {} for u in TYPE_URLS})
        else:
            resources = {u: {n: None for n in names} for u, names in r.view(node).items()}
        nodes.append(
            {
                "node": node,
                "instance": naming.instance_key(reg.service, reg.instance_id),
                "service": reg.service,
                "sidecar": reg.sidecar is not None,
                "resources": {u: dict(sorted(resources.get(u, {}).items())) for u in TYPE_URLS},
            }
        )
    problems = list(rendered.problems) if rendered is not None else sorted(set(r.rule_problems.values()))
    if service is not None:
        problems = [p for p in problems if f"'{service}'" in p or f"{service}/" in p]
    return {
        "format": FORMAT,
        "kind": "mesh",
        "at": iso(at_ms),
        "at_ms": at_ms,
        "source": source,
        "filter": {"service": service} if service is not None else {},
        "services": services,
        "route_rules": rules,
        "destination_policies": policies,
        "nodes": nodes,
        "problems": problems,
    }


# ---------------------------------------------------------------- one node


def body_json(type_url: str, body: bytes) -> dict:
    from google.protobuf import any_pb2, json_format

    msg = any_pb2.Any(type_url=type_url, value=body)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def node_document(
    state: MeshState,
    node: str,
    versions: Versions,
    *,
    at_ms: int,
    source: dict,
    bodies: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    inst = state.node_instance(node)
    doc = {
        "format": FORMAT,
        "kind": "node",
        "at": iso(at_ms),
        "at_ms": at_ms,
        "source": source,
        "node": node,
        "instance": None
        if inst is None
        else instance_doc(state, naming.instance_key(inst.reg.service, inst.reg.instance_id), inst),
        "resources": {u: dict(sorted(versions.get(u, {}).items())) for u in TYPE_URLS},
    }
    if bodies is not None:
        from google.protobuf import json_format

        doc["bodies"] = {
            u: {
                name: json_format.MessageToDict(msg, preserving_proto_field_name=True)
                for name, msg in sorted(bodies.get(u, {}).items())
            }
            for u in TYPE_URLS
        }
    return doc


def config_dump(
    node: str, versions: Versions, bodies: Mapping[str, Mapping[str, Any]], *, at_ms: int
) -> dict:
    """The node's resources the way Envoy's ``/config_dump`` shows dynamic resources."""
    from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2 as shared
    from google.protobuf import any_pb2, json_format

    def packed(msg) -> any_pb2.Any:
        out = any_pb2.Any()
        out.Pack(msg, deterministic=True)
        return out

    def items(type_url: str):
        named = bodies.get(type_url, {})
        for name in sorted(named):
            yield name, versions.get(type_url, {}).get(name, ""), named[name]

    clusters = shared.ClustersConfigDump(
        dynamic_active_clusters=[
            shared.ClustersConfigDump.DynamicCluster(version_info=v, cluster=packed(m)) for _n, v, m in items(CLUSTER)
        ]
    )
    endpoints = shared.EndpointsConfigDump(
        dynamic_endpoint_configs=[
            shared.EndpointsConfigDump.DynamicEndpointConfig(version_info=v, endpoint_config=packed(m))
            for _n, v, m in items(ENDPOINT)
        ]
    )
    listeners = shared.ListenersConfigDump(
        dynamic_listeners=[
            shared.ListenersConfigDump.DynamicListener(
                name=n,
                active_state=shared.ListenersConfigDump.DynamicListenerState(version_info=v, listener=packed(m)),
            )
            for n, v, m in items(LISTENER)
        ]
    )
    routes = shared.RoutesConfigDump(
        dynamic_route_configs=[
            shared.RoutesConfigDump.DynamicRouteConfig(version_info=v, route_config=packed(m))
            for _n, v, m in items(ROUTE)
        ]
    )
    dump = config_dump_pb2.ConfigDump(configs=[packed(clusters), packed(endpoints), packed(listeners), packed(routes)])
    doc = json_format.MessageToDict(dump, preserving_proto_field_name=True)
    doc["replay"] = {"format": FORMAT, "node": node, "at": iso(at_ms), "at_ms": at_ms}
    return doc


# ---------------------------------------------------------------- diff


def rejection_doc(lg: Logged | None, j: t.Decision, ts: int | None = None) -> dict:
    when = lg.timestamp_ms if lg is not None else ts
    if isinstance(j, t.SubscriptionRejected):
        what = {"kind_of_rule": "subscription", "name": j.dependency, "revision": None,
                "subscriber": naming.instance_key(j.service, j.instance_id), "action": j.action}
    elif isinstance(j, t.EventRefused):
        what = {"kind_of_rule": "authorship", "name": j.event_key, "revision": None, "event_type": j.event_type,
                "problem": j.problem, "author": j.author}
    else:
        what = {"kind_of_rule": j.kind, "name": j.name, "revision": j.revision}
    return {
        "time": iso(when),
        "timestamp_ms": when,
        **what,
        "reason": j.reason,
        "source": {"topic": j.source_topic, "partition": j.source_partition, "offset": j.source_offset},
    }


def dead_letter_doc(u: tuple, recorded: dict | None) -> dict:
    """A record the projector could not use: ``u`` is (topic, partition, offset, timestamp_ms, reason) as
    replay met it; ``recorded`` the projector's dead letter for it (``replay.deadletters``), if it wrote one."""
    topic, partition, offset, ts, reason = u
    return {
        "time": iso(ts),
        "timestamp_ms": ts,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "reason": recorded["reason"] if recorded else reason,
        "stage": recorded["stage"] if recorded else "decode",
        "recorded": recorded is not None,
    }


def diff_document(
    *,
    from_ms: int,
    to_ms: int,
    node: str | None,
    start_versions: Mapping[ResourceKey, str],
    end_versions: Mapping[ResourceKey, str],
    start_membership: Mapping[str, Any],
    end_membership: Mapping[str, Any],
    steps: Iterable[Step],
    undecodable: Iterable[dict] = (),
    convergence: Mapping[tuple[str, int, int], dict] = {},
    accepted: Mapping[tuple[str, int, int], dict] = {},
    dropped: Dropped | None = None,
) -> dict:
    """``convergence`` (whole mesh) and ``accepted`` (one node): by the source of a step's last event.
    ``dropped``: the walk's steps left out of ``steps`` (they changed nothing): counted, not listed."""
    steps = list(steps)

    def step_source(i: int) -> tuple[str, int, int]:
        last = steps[i].events[-1]
        return (last.topic, last.partition, last.offset)

    touched_by: dict[ResourceKey, list[int]] = {}  # resource -> indexes of the steps that changed it
    events = dropped.events if dropped else 0
    exact = dropped.exact if dropped else True
    rejections = []
    for i, step in enumerate(steps):
        events += step.size
        exact = exact and step.exact
        for lg, j in step.decisions:
            rejections.append(rejection_doc(lg, j))
        eff = step.effect
        if eff.empty:
            continue
        for key in (*eff.changed, *eff.removed):
            touched_by.setdefault(key, []).append(i)

    def step_causes(i: int, service: str | None) -> list[dict]:
        group = steps[i].events
        if len(group) > 1:
            # a group of events was folded at once: prefer the ones about the resource's service
            about = [lg for lg in group if service is not None and mentions(lg.envelope.payload, service)]
            group = about or group
            if len(group) > GROUP_CAUSES:
                return [*(event_ref(lg) for lg in group[: GROUP_CAUSES - 1]),
                        {**event_ref(group[-1]), "and_before": len(group) - GROUP_CAUSES}]
        return [event_ref(lg) for lg in group]

    def causes(key: ResourceKey) -> list[dict]:
        out: list[dict] = []
        service = resource_service(key)
        for i in touched_by.get(key, ()):
            refs = step_causes(i, service)
            if node is None:  # the whole mesh: how far each causing event reached (its step's convergence)
                conv = convergence.get(step_source(i))
                refs = [{**r, "convergence": conv} for r in refs]
            out += refs
        return out

    def entry(key: ResourceKey, **kw) -> dict:
        doc = {"type_url": key[0], "name": key[1], **kw, "caused_by": causes(key)}
        if node is not None:  # one node: when its proxy accepted the view of the last event that changed this
            touching = touched_by.get(key)
            doc["accepted"] = accepted.get(step_source(touching[-1])) if touching else None
        return doc

    order = {u: i for i, u in enumerate(TYPE_URLS)}

    def sort_key(k: ResourceKey):
        return (order.get(k[0], 99), k[1])

    added = [entry(k, version=end_versions[k]) for k in sorted(set(end_versions) - set(start_versions), key=sort_key)]
    removed = [
        entry(k, version=start_versions[k]) for k in sorted(set(start_versions) - set(end_versions), key=sort_key)
    ]
    changed = [
        entry(k, from_version=start_versions[k], to_version=end_versions[k])
        for k in sorted(set(start_versions) & set(end_versions), key=sort_key)
        if start_versions[k] != end_versions[k]
    ]
    nodes = {
        "added": sorted(set(end_membership) - set(start_membership)),
        "removed": sorted(set(start_membership) - set(end_membership)),
        "changed": sorted(
            n for n in set(start_membership) & set(end_membership) if start_membership[n] != end_membership[n]
        ),
    }
    return {
        "format": FORMAT,
        "kind": "diff",
        "from": iso(from_ms),
        "from_ms": from_ms,
        "to": iso(to_ms),
        "to_ms": to_ms,
        "node": node,
        "events": events,
        "exact": exact,
        "added": added,
        "removed": removed,
        "changed": changed,
        "nodes": nodes,
        "rejections": rejections,
        "undecodable": list(undecodable),
    }


# ---------------------------------------------------------------- log


def effect_doc(eff: Effect) -> dict:
    return {
        "changed": [[k[0], k[1], v] for k, v in sorted(eff.changed.items())],
        "removed": [[k[0], k[1]] for k in sorted(eff.removed)],
        "nodes": sorted(eff.changed_nodes),
        "nodes_removed": sorted(eff.removed_nodes),
    }


NO_EFFECT_DOC = Effect({}, {}, frozenset(), frozenset())


def restrict(eff: Effect, *, service: str | None) -> Effect:
    """Only the part of an effect about ``service``'s resources (all of it without a service)."""
    if service is None:
        return eff
    return Effect(
        {k: v for k, v in eff.changed.items() if resource_service(k) == service},
        {k: v for k, v in eff.removed.items() if resource_service(k) == service},
        eff.changed_nodes,
        eff.removed_nodes,
    )


def touched_services(eff: Effect) -> set[str]:
    return {svc for k in (*eff.changed, *eff.removed) if (svc := resource_service(k)) is not None}


def event_matches(
    lg: Logged,
    eff: Effect,
    *,
    service: str | None,
    node: str | None,
    node_keys: set[str] = frozenset(),
    services_touched: set[str] | None = None,
) -> bool:
    """Whether an event belongs in a log filtered by service or node."""
    if service is None and node is None:
        return True
    payload = lg.envelope.payload
    if service is not None:
        if mentions(payload, service):
            return True
        return service in (services_touched if services_touched is not None else touched_services(eff))
    # node filter
    if node in eff.changed_nodes or node in eff.removed_nodes:
        return True
    if getattr(payload, "node_id", None) == node:
        return True
    return lg.envelope.key in node_keys


def for_service_log(service: str, told_nodes: Collection[str] | None = None) -> Callable[[Step], Step | None]:
    """``walk``'s ``keep`` for ``log_document(service=...)``: of a step the log lists something of, what it
    lists (a group keeps its first, last and listed events, its size and its effect); of any other, only
    what convergence needs (its view changes and last event, nothing the filtered log lists); a step that
    changed no view is dropped. A group's effect is kept only for the service's resources (what the log
    shows of it) and its nodes.

    ``told_nodes``: the only nodes whose views convergence can use (``acceptance.nodes_with_proxies``):
    the views of others are let go, and a step listing nothing that changed none of these is dropped.
    None keeps every view."""

    about = about_service(service)

    def told(views: Mapping[str, Versions]) -> Mapping[str, Versions]:
        if told_nodes is None or not views:
            return views
        return {n: v for n, v in views.items() if n in told_nodes}

    def keep(step: Step) -> Step | None:
        eff = step.effect
        if step.size > 1:  # a group: listed if one of its events is about the service
            listed = [lg for lg in step.events if about(lg)]
            if listed:
                first, last = step.events[0], step.events[-1]
                kept = [first, *(lg for lg in listed if lg is not first and lg is not last), last]
                sources = {(lg.topic, lg.partition, lg.offset) for lg in listed}
                decisions = [(lg, j) for lg, j in step.decisions
                             if (j.source_topic, j.source_partition, j.source_offset) in sources]
                # the log shows a group's effect on the service's resources only (``restrict``), and its nodes
                narrowed = restrict(eff, service=service)
                return Step(kept, decisions, replace(narrowed, views=told(eff.views)), step.exact, step.size)
        else:
            touched = touched_services(eff)
            if any(event_matches(lg, eff, service=service, node=None, services_touched=touched)
                   for lg in step.events):
                return step if told_nodes is None else replace(step, effect=replace(eff, views=told(eff.views)))
        views = told(eff.views)
        if not views:
            return None
        return Step(step.events[-1:], [], Effect({}, {}, eff.changed_nodes, frozenset(), views), step.exact)

    # the events of a group this keeps (besides its first and last): a walk holds no others while it folds one
    keep.group_events = about  # type: ignore[attr-defined]
    return keep


def about_service(service: str) -> Callable[[Logged], bool]:
    """Whether an event is about ``service`` (``service in payload_services(payload)``, which is what
    ``event_matches`` says of an event with no effect): a service log's question for each event of a group."""

    def about(lg: Logged) -> bool:
        return mentions(lg.envelope.payload, service)

    return about


def log_document(
    *,
    from_ms: int,
    to_ms: int,
    service: str | None,
    node: str | None,
    steps: Iterable[Step],
    node_keys: set[str] = frozenset(),
    recorded_rejections: Mapping[tuple[str, int, int], tuple[int, t.Decision]] = {},
    dead_letters: Iterable[dict] = (),
    convergence: Mapping[tuple[str, int, int], dict] = {},
    sync_entries: Iterable[dict] = (),
    author_of: Callable[[Logged], dict] | None = None,
    dropped: Dropped | None = None,
) -> dict:
    """The audit trail. ``author_of``: an event's verified author (``replay.identities.author_doc``).
    ``recorded_rejections``: (source topic, partition, offset) -> (time, rejection) from the rejections topic;
    ``dead_letters``: DEAD entries (already filtered to the window); ``dropped``: the walk's steps
    ``for_service_log`` left out (nothing of them is listed)."""
    entries: list[dict] = []
    groups: list[dict] = []
    exact = dropped.exact if dropped else True
    matched_recorded: set[tuple[str, int, int]] = set()
    for step in steps:
        exact = exact and step.exact
        decided = {(j.source_topic, j.source_partition, j.source_offset): j for _lg, j in step.decisions}
        grouped = step.size > 1
        if grouped:
            # several events folded at once: the effect belongs to the group, listed once; an event is in a
            # filtered log only if it is itself about the service or node
            eff = restrict(step.effect, service=service)
            matching = [lg for lg in step.events if event_matches(lg, NO_EFFECT_DOC, service=service, node=node,
                                                                  node_keys=node_keys, services_touched=set())]
            if not matching:
                continue
            group_index = len(groups)
            last = step.events[-1]
            groups.append({"group": group_index, "events": step.size, "first": event_ref(step.events[0]),
                           "last": event_ref(last), "effect": effect_doc(eff),
                           "convergence": convergence.get((last.topic, last.partition, last.offset))})
        else:
            services_touched = touched_services(step.effect) if service is not None else None
            matching = [lg for lg in step.events if event_matches(lg, step.effect, service=service, node=node,
                                                                  node_keys=node_keys,
                                                                  services_touched=services_touched)]
            group_index = None
        for lg in matching:
            src = (lg.topic, lg.partition, lg.offset)
            j = decided.get(src)
            rejection = None
            if j is not None:
                rejection = {"reason": j.reason, "recorded": src in recorded_rejections}
                matched_recorded.add(src)
            entries.append(
                {
                    "kind": "event",
                    **event_ref(lg),
                    "payload": lg.envelope.payload.model_dump(mode="json"),
                    "effect": None if grouped else effect_doc(step.effect),
                    "group": group_index,
                    "rejection": rejection,
                    "convergence": None if grouped else convergence.get(src),
                    **({"author": author_of(lg)} if author_of is not None else {}),
                }
            )
    for src, (ts, j) in sorted(recorded_rejections.items()):
        if src in matched_recorded:
            continue
        if service is not None and service not in payload_services(j):
            continue
        if node is not None:
            continue
        entries.append({"kind": "rejection", **rejection_doc(None, j, ts)})
    for dead in dead_letters:
        entries.append({"kind": "dead_letter", **dead})
    entries.extend(sync_entries)
    entries.sort(key=lambda e: (e["timestamp_ms"] or 0, e.get("topic") or e.get("source", {}).get("topic", ""),
                                e.get("offset") if e.get("offset") is not None else e.get("source", {}).get("offset", 0)))
    return {
        "format": FORMAT,
        "kind": "log",
        "from": iso(from_ms),
        "from_ms": from_ms,
        "to": iso(to_ms),
        "to_ms": to_ms,
        "filter": {k: v for k, v in (("service", service), ("node", node)) if v is not None},
        "exact": exact,
        "entries": entries,
        "groups": groups,
    }
