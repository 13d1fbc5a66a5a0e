"""Who may state what: the authorization rules the fold applies to verified events.

Pure: ``refusal(author, payload, key, lookup)`` reads the mesh state through
``lookup(field)`` (the fold's transaction: ``instances``, ``nodes``,
``by_service``, ``services``) and answers ``None`` (permitted) or a
``Refusal(problem, reason)``. ``projector.fold`` calls it for every event it
folds when it runs with a verifier (live and in ``replay`` alike); there is
no other copy of these rules.

The rules (``author`` is a verified SPIFFE id, ``events.types`` the facts):

- ``sidecar/S/I`` may register, deregister, report health of and subscribe
  for instance ``I`` of service ``S`` only.
- ``checker/*`` may report the health of any instance, and nothing else.
- ``operator/*`` may do everything on the event topics: edit rules, register,
  deregister any instance, report health, subscribe. It is also each
  service's owner for service-wide settings (below).
- ``gateway/*`` may append learned subscriptions (``origin="learned"``: its
  proxy asked for a cluster on demand), and nothing else.
- Nobody else (the projector, replay, brokers, CA servers, the root) may
  state any of these facts; in particular only operators write rules.
- A registration may not claim a node id held by the live registration of
  another instance: a node id is bound to the instance that registered it
  until that instance deregisters (``node_id_taken``).
- A registration not made by an operator may not change a service-wide
  setting while another instance of the service is registered: the protocol,
  and for TCP services the port (the callers' listener port). The first
  instance of a service sets them; to change them later, an operator
  re-registers (``service_setting``).
- A registration may claim only its author's trust domain for its sidecar
  (``trust_domain``): the render names callers and destinations by it.
- A registration not made by an operator carries a weight of at most
  ``MAX_INSTANCE_WEIGHT`` (``weight_too_high``): one instance may not draw
  most of a service's traffic by its own say-so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from events import types as t
from identity.spiffe import SpiffeId
from projector.naming import instance_key

#: the largest weight an instance may give itself (an operator may set up to the event type's limit, 128)
MAX_INSTANCE_WEIGHT = 10

Lookup = Callable[[str], Any]  # field name -> a mapping with .get (the fold's transaction)

_INSTANCE_FACTS = (t.InstanceRegistered, t.InstanceDeregistered, t.InstanceHealthChanged, t.DependencySubscribed,
                   t.DependencyUnsubscribed)
_RULE_FACTS = (t.RouteRuleUpserted, t.RouteRuleDeleted, t.DestinationPolicyUpserted, t.DestinationPolicyDeleted,
               t.AccessPolicyUpserted, t.AccessPolicyDeleted)


# what a payload type is to these rules, as bit flags: computed once per type (``_kind``), so the per-event
# path makes no ``isinstance`` test (against pydantic's ABC metaclass a miss costs ~0.15 us, a tuple ~0.8 us)
_INSTANCE, _RULE, _HEALTH, _SUBSCRIBED, _REGISTERED = 1, 2, 4, 8, 16
_KINDS: dict[type, int] = {}


def _kind(payload: t.Payload) -> int:
    kind = _KINDS.get(type(payload))
    if kind is None:  # a type not seen yet: the same answers as isinstance, memoized per type (pure)
        kind = _KINDS[type(payload)] = (
            (_INSTANCE if isinstance(payload, _INSTANCE_FACTS) else 0) | (_RULE if isinstance(payload, _RULE_FACTS) else 0)
            | (_HEALTH if isinstance(payload, t.InstanceHealthChanged) else 0)
            | (_SUBSCRIBED if isinstance(payload, t.DependencySubscribed) else 0)
            | (_REGISTERED if isinstance(payload, t.InstanceRegistered) else 0))
    return kind


@dataclass(frozen=True, slots=True)
class Refusal:
    problem: str  # an ``EventRefused.problem``
    reason: str


def _describe(payload: t.Payload) -> str:
    if isinstance(payload, _INSTANCE_FACTS):
        return f"{payload.TYPE} of instance {payload.service}/{payload.instance_id}"
    return f"{payload.TYPE} of {payload.key()}"


def _service_settings(protocol: str, port: int) -> tuple:
    return (protocol, port) if protocol == "tcp" else (protocol,)


def _registration_refusal(author: SpiffeId, p: t.InstanceRegistered, lookup: Lookup) -> Refusal | None:
    key = instance_key(p.service, p.instance_id)
    claimed = p.sidecar.trust_domain if p.sidecar is not None else None
    if claimed is not None and claimed != author.domain:
        # the render admits callers and names destinations by this domain: only its own may be claimed
        return Refusal("trust_domain", f"the registration claims trust domain {claimed!r}, but its author's identity "
                                       f"is of {author.domain!r}")
    if p.node_id is not None:
        holders = lookup("nodes").get(p.node_id)
        # the common case first, without building sets: nobody holds the node id, or this instance alone does
        if holders and not (len(holders) == 1 and key in holders):
            others = sorted(holders - {key})
            return Refusal("node_id_taken", f"node id {p.node_id!r} is held by the live registration of "
                                            f"{others[0]!r}; it is bound to that instance until it deregisters")
    if author.role == "operator":
        return None
    if p.weight > MAX_INSTANCE_WEIGHT:
        return Refusal("weight_too_high", f"weight {p.weight} is over the {MAX_INSTANCE_WEIGHT} an instance may give "
                                          "itself (an operator may set more)")
    meta = lookup("services").get(p.service)
    # the peers are looked up only when the registration would change a setting (a re-registration rarely does)
    if meta is not None and (meta.protocol != p.protocol or (p.protocol == "tcp" and meta.port != p.port)):
        peers = (lookup("by_service").get(p.service) or frozenset()) - {key}
        now, wanted = _service_settings(meta.protocol, meta.port), _service_settings(p.protocol, p.port)
        if peers and now != wanted:
            setting = "protocol" if meta.protocol != p.protocol else "port"
            current = meta.protocol if setting == "protocol" else meta.port
            asked = p.protocol if setting == "protocol" else p.port
            return Refusal("service_setting", f"{setting} is a service-wide setting of {p.service!r} ({current}); "
                                              f"one instance may not change it to {asked} for its "
                                              f"{len(peers)} peer(s): an operator re-registers to change it")
    return None


def refusal(author: SpiffeId, payload: t.Payload, lookup: Lookup) -> Refusal | None:
    """Why ``author`` may not state ``payload`` in the current state, or None if it may."""
    kind = _KINDS.get(type(payload))  # ``_kind``'s memo, read here: this runs for every verified event
    if kind is None:
        kind = _kind(payload)
    # who may state what (the module docstring), the roles that state most events first: a checker's health
    # report, a sidecar's own registration
    role = author.role
    if role == "checker":
        permitted = kind & _HEALTH
    elif role == "sidecar":
        segments = author.segments  # (service, instance): a sidecar id has exactly these two
        permitted = kind & _INSTANCE and payload.instance_id == segments[1] and payload.service == segments[0]
    elif role == "operator":
        permitted = True
    elif role == "gateway":
        permitted = kind & _SUBSCRIBED and payload.origin == "learned"
    else:
        permitted = False
    if not permitted:
        return _not_permitted(author, payload, kind)
    if kind & _REGISTERED:
        return _registration_refusal(author, payload, lookup)
    return None


def _not_permitted(author: SpiffeId, payload: t.Payload, kind: int) -> Refusal:
    what = _describe(payload)
    if kind & _RULE:
        why = "only operators edit rules"
    elif author.role == "sidecar":
        why = f"a sidecar may state facts only about its own instance {author.segments[0]}/{author.segments[1]}"
    elif author.role == "checker":
        why = "a checker may only report health"
    else:
        why = f"the {author.role} role states none of these facts"
    return Refusal("not_permitted", f"{author.uri} may not state {what}: {why}")
