"""Sans-I/O state-of-the-world ADS protocol machine, one per stream.

``SotwStream`` serves ``StreamAggregatedResources`` (grpcio's proxyless xDS
client speaks only this variant). Same inputs as :mod:`.delta`: the node's
view and ``DiscoveryRequest`` messages; it returns the ``DiscoveryResponse``
messages to send, in order.

Spec decisions (xDS REST and gRPC protocol document):

* Each request carries the full list of names for its type; it replaces the
  previous one ("new DiscoveryRequests supersede any prior DiscoveryRequests
  having the same resource type").
* Wildcard exists for Listener and Cluster only ("For Listener and Cluster
  resource types, there is also a wildcard subscription"): ``*`` in the list,
  or the legacy form -- every request so far for the type had an empty list.
  "once the client does explicitly subscribe to a resource name ... clearing
  the list of subscribed resources is interpreted as an unsubscription", and a
  request listing only "A" after the legacy wildcard drops the wildcard (the
  SotW example in the spec). For other types ``*`` is an ordinary name.
* Responses always carry every subscribed resource of the type that exists
  (required for LDS/CDS: "the server must include the complete state of the
  world"; done for RDS/EDS too, restricted to the requested names, which is
  allowed and what grpcio expects). For LDS/CDS an absent name means deleted.
* When to respond: on the first request for LDS/CDS (even if empty: absence in
  an LDS/CDS response is how a SotW client learns a name does not exist), when
  the wildcard is newly subscribed, when new names are requested (for RDS/EDS
  only if one of them exists -- "the server must resend any newly requested
  resources, even if it previously sent those resources"), and when the
  content of a type changes. An ACK, or a request that only drops names, gets
  nothing ("The management server should only send updates ... when the
  resources in the DiscoveryResponse have changed"); the client forgets
  dropped names itself. But it forgets only what its own list no longer
  covers: under ``*`` it keeps every resource it is sent ("the set of
  resources being subscribed to is determined by the server instead of the
  client"), even one this node may get by explicit name only
  (``wildcard_allowed=False``, ``allowed``). So a subscription change is
  answered whenever what the client keeps differs from what it may have --
  for LDS/CDS a complete state without the extra names, which deletes them.
* Nonces: a request whose ``response_nonce`` is not the latest nonce sent for
  its type is stale ("The management server should not send a
  DiscoveryResponse for any DiscoveryRequest that has a stale nonce"): it gets
  no response and ACKs nothing, but its list is still recorded (as delta
  requires: "the server must honor changes to the subscription state even if
  the nonce is stale"), and the names it newly asked for are answered with the
  next current request. Ignoring it outright loses updates: a client that
  drops "A" in a stale request ignores "A" in the in-flight response, and
  asking for "A" again in its ACK would look like no change. An empty nonce
  is stale once a response of the type was sent.
* ACK/NACK: the first request carrying the latest nonce answers it;
  ``error_detail`` makes it a NACK ("The preferred mechanism for a server to
  detect a NACK is to look for the presence of the error_detail field"). A NACK
  is recorded; the rejected content is not resent until the view changes it.
  As in :mod:`.delta`, the last ``max_records`` NACKs and refused requests are
  kept, each with at most ``CLIENT_TEXT_MAX`` characters of the client's text.
  What the client holds (``acked``) is the content of the last ACKed response
  of the type; with ``report_sync`` each ACK (with it) and NACK is reported as
  plain data (``take_learned``) for the gateway's sync log.
* Ordering and coalescing as in :mod:`.delta`: one batch in CDS, EDS, LDS, RDS
  order; the stream-wide gate holds view changes while any response is
  un-ACKed. Removal in SotW is implicit, so make-before-break is done by
  sending an LDS/CDS response that still holds the resources being dropped
  (their previous bodies) at the start of the batch, and the final set (without
  them) at its end, after RDS/LDS stopped referring to them. The first of the
  two responses' nonce is superseded at once (its ACK counts as stale). When a
  Cluster is new or changed, its ClusterLoadAssignment, if requested, is sent
  after it even if unchanged (Envoy needs it to finish warming the cluster).
* A request for a type the gateway does not serve gets nothing and is recorded
  in ``errors``.
* Limits (:mod:`.limits`): a request listing more than
  ``max_names_per_type`` names raises ``Refused`` before it changes anything.
  At most one response per type is pending here, so the pending-nonce cap
  cannot be reached.
* ``version_info`` is an order-free digest of the response's (name, version)
  pairs: equal content gives equal versions on every gateway replica.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from .common import CLIENT_TEXT_MAX, Acked, Nack, StreamMachine, content_version, order_segments
from .limits import Refused
from .resources import CLUSTER, ENDPOINT, LISTENER, WILDCARD, NodeView, VersionedResource, type_rank

__all__ = ["SotwStream", "WILDCARD_TYPES"]

#: Types with wildcard subscriptions and complete-state responses.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

Content = dict[str, VersionedResource]


def _same(a: Content, b: Content) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[n].version == b[n].version for n in a)


class _TypeState:
    __slots__ = (
        "type_url",
        "seen",
        "explicit_ever",
        "names",
        "wildcard",
        "sent",
        "nonce",
        "pending",
        "pending_resources",
        "pending_bytes",
        "version_info",
        "dirty",
        "owed",
        "owed_wildcard",
        "acked",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.seen = False
        self.explicit_ever = False  # some request had a non-empty list
        self.names: frozenset[str] = frozenset()  # explicit names ("*" excluded for wildcard types)
        self.wildcard = False
        self.sent: Content = {}  # content of the last response, restricted to the current scope
        self.nonce: str | None = None  # latest nonce sent for the type
        self.pending = False  # the latest response awaits its ACK/NACK
        self.pending_resources: tuple[tuple[str, str], ...] = ()
        self.pending_bytes = 0
        self.version_info = ""
        self.dirty = False
        self.owed: frozenset[str] = frozenset()  # newly requested by stale requests
        self.owed_wildcard = False
        self.acked: dict[str, str] = {}  # the content of the last ACKed response: what the client holds


class SotwStream(StreamMachine):
    """Protocol state of one ``StreamAggregatedResources`` stream (options: :class:`.common.StreamMachine`'s)."""

    _types: dict[str, _TypeState]

    # ------------------------------------------------------------------ inputs

    def on_request(self, req: discovery_pb2.DiscoveryRequest) -> list[discovery_pb2.DiscoveryResponse]:
        if not self._served_request(req):
            return []
        t = req.type_url
        listed_n = len(req.resource_names)
        if listed_n > self._limits.max_names_per_type:
            # a SotW list replaces the previous one, so the request's own list is the subscription
            raise Refused("max_names_per_type", f"{listed_n} names requested for {t}, "
                                                f"at most {self._limits.max_names_per_type} allowed")
        ts = self._types.get(t)
        if ts is None:
            ts = self._types[t] = _TypeState(t)
        stale = ts.nonce is not None and req.response_nonce != ts.nonce
        if not stale and ts.pending:
            ts.pending = False
            if req.HasField("error_detail"):
                self._nack(ts, req.error_detail)
            else:
                self.ack_count += 1
                ts.acked = dict(ts.pending_resources)  # a state-of-the-world response replaces the type
                if self._learned is not None:
                    self._learned.append(Acked(t, req.response_nonce, dict(ts.acked)))

        # ---- the subscription this request states (honoured even if stale)
        first = not ts.seen
        ts.seen = True
        wild_type = t in WILDCARD_TYPES
        listed = set(req.resource_names)
        if listed:
            ts.explicit_ever = True
            wildcard = wild_type and WILDCARD in listed
        else:
            wildcard = wild_type and not ts.explicit_ever  # legacy wildcard
        explicit = frozenset(n for n in listed if not (wild_type and n == WILDCARD))
        # names (and the wildcard) newly asked for and not answered yet
        ts.owed = (ts.owed | (explicit - ts.names)) & explicit
        ts.owed_wildcard = wildcard and (ts.owed_wildcard or not ts.wildcard)
        if (explicit, wildcard) != (ts.names, ts.wildcard):
            # The client forgets what it no longer asks for, but what the
            # server may send it can shrink further (a wildcard it may not
            # use, a name ``allowed`` refuses): then only a new complete
            # state tells it to drop the rest. The next flush compares.
            ts.dirty = True
        ts.names, ts.wildcard = explicit, wildcard
        view_t = self._view_of(t)
        for n in [n for n in ts.sent if not self._client_keeps(ts, n)]:
            del ts.sent[n]  # the client drops names it no longer asks for
            ts.acked.pop(n, None)
        if stale:
            # "The management server should not send a DiscoveryResponse for
            # any DiscoveryRequest that has a stale nonce": remember what it
            # asked for and answer with the next current request.
            self.stale_nonce_count += 1
            return []

        newly, wildcard_newly = ts.owed, ts.owed_wildcard
        ts.owed, ts.owed_wildcard = frozenset(), False
        need = wildcard_newly or (first and wild_type)
        if newly:
            need = need or wild_type or any(self._desired(ts, view_t, n) is not None for n in newly)

        if not self.blocked:
            return self._flush({t} if need else set())
        if not need:
            return []
        # Blocked by another type's un-ACKed response: answer the subscription
        # change only, keeping held-back view changes for the other names.
        content: Content = dict(ts.sent)
        for n in newly:
            res = self._desired(ts, view_t, n)
            if res is not None:
                content[n] = res
        if wildcard_newly and self._wildcard_allowed:
            for n, res in view_t.items():
                content.setdefault(n, res)
        plans = {t: (content, None)}
        if t == CLUSTER:
            self._plan_companions(plans, content, ts.sent, latest=False)
        return self._emit(plans)

    def on_view(self, view: NodeView) -> list[discovery_pb2.DiscoveryResponse]:
        self._take_view(view)
        if self.blocked:
            return []
        return self._flush(set())

    # ----------------------------------------------------------- introspection

    def subscriptions(self, type_url: str) -> frozenset[str]:
        """Requested names of a type; ``"*"`` included when wildcard."""
        ts = self._types.get(type_url)
        if ts is None:
            return frozenset()
        return ts.names | {WILDCARD} if ts.wildcard else ts.names

    def known_versions(self, type_url: str) -> dict[str, str]:
        ts = self._types.get(type_url)
        return {n: r.version for n, r in ts.sent.items()} if ts else {}

    def version_info(self, type_url: str) -> str:
        ts = self._types.get(type_url)
        return ts.version_info if ts else ""

    def pending_nonces(self) -> dict[str, tuple[str, ...]]:
        return {t: (ts.nonce,) for t, ts in self._types.items() if ts.pending and ts.nonce}

    def pending_bytes(self) -> int:
        return sum(ts.pending_bytes for ts in self._types.values() if ts.pending)

    # --------------------------------------------------------------- internals

    def _nack(self, ts: _TypeState, error) -> None:
        nack = Nack(
            stream_id=self.stream_id,
            node_id=self.node_id,
            type_url=ts.type_url,
            nonce=ts.nonce or "",
            code=error.code,
            message=error.message[:CLIENT_TEXT_MAX],
            resources=ts.pending_resources,
        )
        self._record_nack(nack)

    def _client_keeps(self, ts: _TypeState, name: str) -> bool:
        """Whether the client keeps ``name`` from a response, by its own subscription.

        "The client will silently ignore any supplied resources that were not
        explicitly requested", but under a wildcard "the set of resources
        being subscribed to is determined by the server instead of the
        client": a wildcard client keeps every resource it is sent, even one
        this node may fetch by explicit name only (``wildcard_allowed``).
        """
        return ts.wildcard or name in ts.names

    def _in_scope(self, ts: _TypeState, name: str) -> bool:
        if ts.wildcard and self._wildcard_allowed:
            return True
        return name in ts.names and self._permits(ts.type_url, name)

    def _desired(self, ts: _TypeState, view_t, name: str) -> VersionedResource | None:
        return view_t.get(name) if self._in_scope(ts, name) else None

    def _latest(self, ts: _TypeState) -> Content:
        view_t = self._view_of(ts.type_url)
        if ts.wildcard and self._wildcard_allowed:
            return dict(view_t)
        out: Content = {}
        for n in ts.names:
            res = view_t.get(n)
            if res is not None and self._permits(ts.type_url, n):
                out[n] = res
        return out

    def _plan(self, ts: _TypeState, content: Content, forced: bool):
        """(early content, late content) for one type, or None if nothing to send."""
        sent = ts.sent
        removed = [n for n in sent if n not in content]
        if removed and ts.type_url in WILDCARD_TYPES:
            early = dict(content)
            for n in removed:
                early[n] = sent[n]  # keep what is being dropped until the end of the batch
            return (early if forced or not _same(early, sent) else None, content)
        if forced or not _same(content, sent):
            return (content, None)
        return None

    def _plan_companions(self, plans, cds_content: Content, cds_sent: Content, *, latest: bool) -> bool:
        """Add the ClusterLoadAssignments of new/changed clusters to ``plans``."""
        eds = self._types.get(ENDPOINT)
        if eds is None or not eds.seen:
            return False
        view_e = self._view_of(ENDPOINT)
        extra: Content = {}
        for n, res in cds_content.items():
            old = cds_sent.get(n)
            if old is not None and old.version == res.version:
                continue
            e = res.eds_name
            cla = self._desired(eds, view_e, e) if e is not None else None
            if cla is not None:
                extra[e] = cla
        if not extra:
            return False
        if latest:
            return True
        plans[ENDPOINT] = ({**eds.sent, **extra}, None)
        return True

    def _flush(self, forced: set[str]) -> list[discovery_pb2.DiscoveryResponse]:
        plans: dict[str, tuple[Content | None, Content | None]] = {}
        for t in sorted(self._types, key=type_rank):  # CDS before EDS: companions
            ts = self._types[t]
            if not ts.seen or not (ts.dirty or t in forced):
                continue
            ts.dirty = False
            plan = self._plan(ts, self._latest(ts), t in forced)
            if plan is None:
                continue
            plans[t] = plan
            if t == CLUSTER and plan[0] is not None:
                if self._plan_companions(plans, plan[0], ts.sent, latest=True):
                    forced.add(ENDPOINT)
        return self._emit(plans)

    def _emit(self, plans) -> list[discovery_pb2.DiscoveryResponse]:
        if not plans:
            return []
        early = {t: p[0] for t, p in plans.items() if p[0] is not None}
        late = {t: p[1] for t, p in plans.items() if p[1] is not None}
        segments = order_segments(early, late, lambda a, b: b)
        return [self._build(t, content) for t, content in segments]

    def _build(self, t: str, content: Content) -> discovery_pb2.DiscoveryResponse:
        ts = self._types[t]
        self._seq += 1
        nonce = f"{self.stream_id}-{self._seq}"
        names = sorted(content)
        pairs = tuple((n, content[n].version) for n in names)
        version = content_version(pairs)
        resp = discovery_pb2.DiscoveryResponse(type_url=t, nonce=nonce, version_info=version)
        resp.resources.extend([content[n].any for n in names])
        ts.sent = dict(content)
        ts.nonce = nonce
        ts.pending = True
        ts.pending_resources = pairs
        ts.pending_bytes = sum(content[n].size for n in names)
        ts.version_info = version
        self.responses_sent += 1
        return resp
