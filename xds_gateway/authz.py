"""Who may stream which node's config: pure decisions, no I/O, no mesh logic.

Two steps, both pure:

1. ``authenticate(peer_spiffe_id, trust_domain, revoked)``: the stream's
   identity from the SPIFFE id gRPC read off the client certificate (TLS
   already checked that the certificate chains to the mesh root and is
   within its validity). Refused (``UNAUTHENTICATED``) when the certificate
   carries no SPIFFE id or not exactly one, when the id is not a meshlog id,
   when it belongs to another trust domain, or when its serial is revoked.
2. ``authorize(identity, node_id, owner)``: may this identity receive this
   node's view? ``owner`` is the (service, instance) whose registration the
   projector rendered as the node (carried in the node's membership record;
   ``None`` while the node is not in the view).

The rules (the trust model of the README):

- ``sidecar/S/I`` owns exactly the node ids that instance ``I`` of service
  ``S`` registered: allowed iff ``owner == (S, I)``. Anything else is denied
  (``PERMISSION_DENIED``), never served.
- A node not in the view yet (Envoy connects before the projector rendered
  its registration, or a proxyless client that never registered) is
  *pending*: the stream gets only shared resources (no per-node ones, as
  for any unknown node) and is decided again when the node appears; if the
  node then belongs to another instance the stream is closed with
  ``PERMISSION_DENIED``.
- ``operator/U`` may watch any node (debugging a proxy's config is an
  operator's job, xDS is read-only, and operators already write the rules
  that shape every config). Every such stream is logged.
- ``gateway``, ``projector``, ``checker`` and ``ca`` identities have no node:
  denied.
- Insecure mode (``identity is None``, plaintext for loopback development):
  everything is allowed, as before mTLS.

``reason`` values are a small fixed set (metric labels); ``detail`` is for
the client and the log, with every client-supplied part bounded and escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, NamedTuple

from events.printable import quoted
from identity.spiffe import SpiffeId, SpiffeIdError, parse

__all__ = ["NodeOwner", "Decision", "Authenticated", "authenticate", "authorize", "ALLOW", "DENY", "PENDING"]

ALLOW, DENY, PENDING = "allow", "deny", "pending"


class NodeOwner(NamedTuple):
    """The registered instance a node stands for (from the projector's membership record)."""

    service: str
    instance: str

    def __str__(self) -> str:
        return f"{self.service}/{self.instance}"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: str  # ALLOW | DENY | PENDING
    reason: str  # bounded label
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOW


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: SpiffeId | None  # None: refused (see ``refusal``)
    refusal: Decision | None = None


def authenticate(peer_spiffe_ids: list[str], trust_domain: str, serial: str | None,
                 revoked: Container[str] = ()) -> Authenticated:
    """The identity of a TLS peer, or why it is refused (``reason`` is the metric label)."""
    if not peer_spiffe_ids:
        return Authenticated(None, Decision(DENY, "no_spiffe_id", "the client certificate carries no SPIFFE id"))
    if len(peer_spiffe_ids) != 1:
        return Authenticated(None, Decision(DENY, "bad_spiffe_id",
                                            f"the client certificate carries {len(peer_spiffe_ids)} SPIFFE ids"))
    try:
        ident = parse(peer_spiffe_ids[0])
    except SpiffeIdError as exc:
        return Authenticated(None, Decision(DENY, "bad_spiffe_id", f"not a meshlog SPIFFE id: {exc}"))
    if ident.domain != trust_domain:
        return Authenticated(None, Decision(DENY, "other_trust_domain",
                                            f"{quoted(ident.uri, 120)} is not of trust domain {trust_domain!r}"))
    if serial is not None and serial in revoked:
        return Authenticated(None, Decision(DENY, "revoked",
                                            f"certificate {serial} of {quoted(ident.uri, 120)} is revoked"))
    return Authenticated(ident)


def authorize(identity: SpiffeId | None, node_id: str, owner: tuple[str, str] | None) -> Decision:
    """May ``identity`` receive node ``node_id``'s view, whose registered owner is ``owner``?"""
    if identity is None:
        return Decision(ALLOW, "insecure")
    role = identity.role
    if role == "operator":
        return Decision(ALLOW, "operator", f"operator {quoted(identity.uri, 120)} watches node {quoted(node_id, 120)}")
    if role != "sidecar":
        return Decision(DENY, "role_has_no_node", f"a {role} identity has no node; {quoted(identity.uri, 120)} "
                                                  f"asked for node {quoted(node_id, 120)}")
    mine = NodeOwner(identity.field("service"), identity.field("instance"))
    if owner is None:
        return Decision(PENDING, "not_in_view", f"node {quoted(node_id, 120)} is not in the view yet")
    if owner == mine:
        return Decision(ALLOW, "owner")
    return Decision(DENY, "not_owner", f"{quoted(identity.uri, 120)} asked for node {quoted(node_id, 120)}, "
                                       f"which belongs to {quoted(NodeOwner(*owner), 120)}")
