"""Sans-I/O incremental (delta) ADS protocol machine, one per stream.

``DeltaStream`` consumes ``DeltaDiscoveryRequest`` messages and changes of the
node's view, and returns the ``DeltaDiscoveryResponse`` messages to send, in
order (as :class:`.wire.DeltaResponse`: the decision, encoded from bytes each
resource serialized once). It does no I/O, keeps no clock and never blocks; the gateway shell owns
the gRPC stream, the queue and the view.

Spec decisions (quotes are from the xDS REST and gRPC protocol document,
envoyproxy/envoy ``docs/root/api-docs/xds_protocol.rst``, and the comments of
``envoy/service/discovery/v3/discovery.proto``):

* Legacy wildcard. The *first* request for a type with both
  ``resource_names_subscribe`` and ``resource_names_unsubscribe`` empty is a
  subscription to ``*`` ("the request must have no resources in both
  resource_names_subscribe and resource_names_unsubscribe"). From then on the
  wildcard is an ordinary ``*`` subscription: "Client sends a request with
  resource_names_subscribe set to "A". Server interprets this as continuing the
  existing subscription to "*" and adding a new subscription to "A"", and it
  ends only when the client unsubscribes ``*``. Later requests with empty lists
  (ACKs) change nothing ("an empty resource_names_subscribe ... simply means
  that no resources are to be added"); after ``*`` was unsubscribed an empty
  set is *not* a wildcard again. (SotW differs: there a request naming only
  "A" drops the legacy wildcard; see ``sotw.py``.)
* "the server must respond with all resources listed in
  resource_names_subscribe, even if it believes the client has the most recent
  version of them": every subscribed name is sent again (or reported removed).
  The one exception is the first request of a type on a reconnected stream: a
  name the client lists in ``initial_resource_versions`` at the current
  version is not resent (that is the point of the field). Subscribing ``*``
  resends everything the wildcard covers.
* A subscribed name that does not exist (or that ``allowed`` refuses) is sent in
  ``removed_resources`` ("When a resource subscribed to by a client does not
  exist, the server will send ... that resource's name in the
  removed_resources field") and sent when it appears.
* Unsubscribing a name sends nothing ("a server does not need to send any
  response if a request does nothing except unsubscribe"), except while ``*``
  is subscribed: then "the server must send a response that includes the
  specific resource in either the removed_resources field (if it is not
  included in the wildcard) or in the resources field (if it is)". Unknown
  names in an unsubscribe are ignored ("phantom unsubscriptions"). A name in
  both lists of one request stays subscribed.
* Unsubscribing ``*`` sends nothing; the client drops what it held only through
  the wildcard.
* ``initial_resource_versions`` is read only on the first request of a type on
  the stream (the proto: it is not populated "in any message after the first
  in a stream (for a given type_url)"). Names whose version differs are sent;
  names the client holds that no longer exist, or that are outside its
  subscriptions, go in ``removed_resources``; equal versions are not sent.
* A first request that subscribes the wildcard always gets a response, even an
  empty one, so a client with nothing to receive still finishes initialising
  (Envoy otherwise waits out its initial fetch timeout). Otherwise nothing is
  sent when nothing changed, and an ACK alone produces nothing.
* Stale nonces: "the server must honor changes to the subscription state even
  if the nonce is stale". A nonce that is not pending for the request's type is
  counted as stale and clears nothing; an ACK/NACK of a pending nonce clears it
  and the older pending nonces of that type (a client processes responses in
  order), never newer ones.
* NACK (``error_detail`` present): recorded with the node, the reason and the
  rejected (name, version) pairs; the server keeps believing the client was
  offered those versions, so they are not resent (no resend loop) until the
  view changes them, the client subscribes to them again, or it reconnects.
  The last ``max_records`` NACKs and refused requests are kept, each with at
  most ``CLIENT_TEXT_MAX`` characters of the client's text.
* What the client holds (``acked``): per type, the versions of every response
  it ACKed applied in order, its ``initial_resource_versions``, minus what it
  unsubscribed. With ``report_sync`` the machine reports each ACK (with that
  map) and each NACK as plain data (``take_learned``) for the gateway's sync
  log; older pending responses cleared by an ACK/NACK of a newer nonce count
  as ACKed (the client processes responses in order).
* Ordering ("Eventual consistency considerations": CDS first, EDS after CDS,
  LDS after CDS/EDS, RDS after LDS, stale clusters removed last): one batch is
  emitted as CDS upserts, EDS upserts, LDS upserts, RDS upserts, then RDS, LDS,
  EDS, CDS removals; adjacent parts of one type merge into one response. When a
  Cluster is (re)sent, the ClusterLoadAssignment it reads over EDS is re-sent
  after it if subscribed, even if unchanged ("Warming of Cluster is completed
  only when a new ClusterLoadAssignment response is supplied by management
  server even though there is no change in endpoints"). If EDS has not been
  requested yet on the stream (a reconnect asks CDS first), those assignments
  are sent with EDS's first response even if ``initial_resource_versions``
  says the client has them.
* New clusters before the routes that use them ("make before break"). A
  Cluster new to the client warms until its ClusterLoadAssignment arrives,
  and Envoy asks for that assignment (explicit EDS subscription) only after it
  has seen the Cluster. A listener or route update sent right behind such a
  Cluster would reach Envoy while the Cluster is still warming, and requests
  routed to it fail (503, cluster not found) until it warms. So when a batch
  of view changes adds a Cluster whose assignment the client has not
  subscribed to, that batch carries CDS (and EDS) only; LDS and RDS changes
  stay deferred until the client has ACKed or NACKed an EDS response carrying
  the assignment — or has ACKed the Cluster without subscribing to it (then it
  is not going to). Updated clusters need no hold (the old one serves while
  the new one warms), nor does an assignment sent in the same batch.
* Coalescing: while any response on the stream is un-ACKed, view changes are
  only remembered (per type, as "dirty"); when the last pending nonce is ACKed
  or NACKed the request that did so returns one batch computed from the
  latest view. The gate is stream-wide rather than per type so that a batch is
  always emitted whole and in make-before-break order (a per-type gate would
  let an RDS update naming a new cluster overtake the CDS update defining it).
  Answers to subscription changes are never held back (the client may be
  waiting for them before it ACKs something else); they carry only the names
  the request touched.
* On-demand hold (``hold_missing``, off by default). A Cluster subscribed
  by name that is not in the node's view, and that ``hold_missing`` says the
  gateway may yet add (Envoy's on-demand CDS asking for an unknown service),
  is not answered "does not exist" at once: Envoy treats that answer as
  final and fails the request it holds. It is *held* -- answered by nothing
  -- until the view gains it (then it goes out like any view change) or the
  shell calls ``release_hold`` (then it is answered as above). The spec
  allows the wait: "Envoy does not expect a DiscoveryResponse for every
  DiscoveryRequest it issues", and "Management servers must remember the set
  of resources being requested by the client, and if one of those resources
  springs into existence later, the server must send an update". The machine
  keeps no clock: ``take_on_hold`` hands newly held names to the shell, which
  bounds the hold. At most ``MAX_HELD`` names are held per stream; past that
  a name is answered at once.
* A request for a type the gateway does not serve (or with no type_url) gets no
  response and is recorded in ``errors``; the stream stays open (closing it
  would make Envoy reconnect and ask again in a loop).
* Limits (:mod:`.limits`): a request with more ``initial_resource_versions``
  entries than allowed, or that would take a type's subscriptions over the
  names cap, raises ``Refused`` before it changes anything; a request after
  which more responses are pending than allowed raises ``Refused`` instead
  of returning them. The shell ends the stream either way.
* Nonces are ``"{stream_id}-{n}"``: unique within the stream and, given unique
  stream ids, within the process. ``system_version_info`` is an order-free
  64-bit digest of the (name, version) pairs the server believes the client
  holds for that type after the response.
"""

from __future__ import annotations

from typing import Callable, Iterable

from envoy.service.discovery.v3 import discovery_pb2

from .common import CLIENT_TEXT_MAX, Acked, Nack, StreamMachine, digest_hex, entry_hash, order_segments
from .limits import Refused
from .resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, WILDCARD, NodeView, VersionedResource
from .wire import DeltaResponse

__all__ = ["DeltaStream", "MAX_HELD"]

#: Clusters one stream may have on hold at once (see "On-demand hold").
MAX_HELD = 16

_MASK64 = (1 << 64) - 1
_HELD_WHILE_WARMING = frozenset((LISTENER, ROUTE))


class _Pending:
    """One un-ACKed response (a plain slotted class: one is made per response, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``)."""

    __slots__ = ("nonce", "resources", "removed", "nbytes", "names")

    def __init__(self, nonce: str, resources: tuple[tuple[str, str], ...], removed: tuple[str, ...], nbytes: int,
                 names) -> None:
        self.nonce = nonce
        self.resources = resources
        self.removed = removed
        self.nbytes = nbytes
        self.names = names  # names in ``resources`` (a set-like view, not mutated)


class _TypeState:
    """What the server knows about one type on one stream."""

    __slots__ = ("type_url", "seen", "names", "sent", "digest", "pending", "dirty", "limbo", "acked")

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.seen = False  # first request processed
        self.names: set[str] = set()  # explicit subscriptions, "*" included
        # The server's model of the client's cache: name -> version, or None for
        # "told it does not exist" (kept for explicit subscriptions only).
        self.sent: dict[str, str | None] = {}
        self.digest = 0
        self.pending: dict[str, _Pending] = {}  # nonce -> response, oldest first
        self.dirty = False  # the view changed since the last full diff
        # Names the client unsubscribed while an un-ACKed response still carried
        # them: name -> nonce of the newest such response. Should the client
        # widen its scope (subscribe "*") before processing that response, it
        # will keep the resource, so the server must treat it as held again.
        self.limbo: dict[str, str] = {}
        self.acked: dict[str, str] = {}  # what the client holds: ACKed responses applied in order

    def apply_acked(self, p: _Pending) -> None:
        wildcard = WILDCARD in self.names
        for name, version in p.resources:
            if wildcard or name in self.names:  # else unsubscribed meanwhile: the client ignores it
                self.acked[name] = version
        for name in p.removed:
            self.acked.pop(name, None)

    @property
    def wildcard(self) -> bool:
        return WILDCARD in self.names

    def record(self, name: str, version: str | None) -> None:
        old = self.sent.get(name)
        if old is not None:
            self.digest = (self.digest - entry_hash(name, old)) & _MASK64
        self.sent[name] = version
        if version is not None:
            self.digest = (self.digest + entry_hash(name, version)) & _MASK64

    def forget(self, name: str) -> None:
        old = self.sent.pop(name, None)
        if old is not None:
            self.digest = (self.digest - entry_hash(name, old)) & _MASK64


class _Work:
    """One type's part of a batch: names to send and names to remove."""

    __slots__ = ("upserts", "removals", "always")

    def __init__(self) -> None:
        self.upserts: dict[str, VersionedResource] = {}
        self.removals: set[str] = set()
        self.always = False  # respond even if empty

    def upsert(self, res: VersionedResource) -> None:
        self.upserts[res.name] = res
        self.removals.discard(res.name)

    def remove(self, name: str) -> None:
        self.removals.add(name)
        self.upserts.pop(name, None)

    def drop(self, name: str) -> None:
        self.upserts.pop(name, None)
        self.removals.discard(name)


class DeltaStream(StreamMachine):
    """Protocol state of one ``DeltaAggregatedResources`` stream.

    ``view`` is this node's view (type URL -> name -> resource); the options
    (``allowed``, ``wildcard_allowed``, ``served_types``, ``limits``, ...) are
    :class:`.common.StreamMachine`'s. ``on_request`` raises :class:`Refused`
    over the limits. ``hold_missing`` turns on the on-demand hold for the
    cluster names it accepts (see the module docstring).
    """

    _types: dict[str, _TypeState]

    def __init__(self, stream_id: str, view: NodeView, *,
                 hold_missing: Callable[[str], bool] | None = None, **options) -> None:
        super().__init__(stream_id, view, **options)
        self._eds_owed: set[str] = set()  # CLAs to send with EDS's first response
        # New clusters' assignment name -> cluster name, while LDS/RDS changes wait for them to warm
        self._warming: dict[str, str] = {}
        self._hold_missing = hold_missing
        self._on_hold: dict[str, None] = {}  # clusters on hold, oldest first
        self._newly_on_hold: list[str] = []  # until the shell takes them

    # ------------------------------------------------------------------ inputs

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        """Handle one client request; return the responses to send, in order.

        Raises :class:`Refused` when the request goes over a stream limit
        (the stream is to end; checks on the request itself change nothing).
        """
        if not self._served_request(req):
            return []
        t = req.type_url
        self._admit(self._types.get(t), req)
        ts = self._types.get(t)
        if ts is None:
            ts = self._types[t] = _TypeState(t)
        if req.response_nonce:
            self._on_ack(ts, req.response_nonce, req.error_detail if req.HasField("error_detail") else None)
        work: dict[str, _Work] = {}
        self._subscriptions(ts, req, work)
        if not self.blocked:
            self._collect_dirty(work)
        responses = self._emit(work)
        if not responses:
            return responses  # nothing new is pending: the cap was checked when the pending ones were emitted
        pending = sum(len(x.pending) for x in self._types.values())
        if pending > self._limits.max_pending_nonces:
            raise Refused("max_pending_nonces", f"{pending} responses un-ACKed, at most "
                                                f"{self._limits.max_pending_nonces} allowed")
        return responses

    def _admit(self, ts: _TypeState | None, req) -> None:
        """Refuse a request over the initial-versions or names cap, before it changes anything."""
        subs = req.resource_names_subscribe
        irv = len(req.initial_resource_versions)
        if not subs and not irv:
            return  # an ACK, or a request that only unsubscribes: nothing it could add
        lim = self._limits
        if irv > lim.max_initial_versions:
            raise Refused("max_initial_versions", f"{irv} initial_resource_versions entries for {req.type_url}, "
                                                  f"at most {lim.max_initial_versions} allowed")
        if len(subs) > lim.max_names_per_type:
            raise Refused("max_names_per_type", f"{len(subs)} names subscribed to {req.type_url} in one request, "
                                                f"at most {lim.max_names_per_type} allowed")
        held = ts.names if ts is not None else ()
        total = len(held) + sum(1 for n in set(subs) if n not in held)
        if total > lim.max_names_per_type:
            raise Refused("max_names_per_type", f"{total} names subscribed to {req.type_url}, "
                                                f"at most {lim.max_names_per_type} allowed")

    def on_view(self, view: NodeView) -> list[DeltaResponse]:
        """The node's view changed; return the responses to send now (maybe none)."""
        self._take_view(view)
        if self.blocked:
            return []
        work: dict[str, _Work] = {}
        self._collect_dirty(work)
        return self._emit(work)

    def take_on_hold(self) -> list[str]:
        """Clusters put on hold since the last call (the shell bounds each hold and may act on it)."""
        got, self._newly_on_hold = self._newly_on_hold, []
        return got

    def release_hold(self, names: Iterable[str]) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """End the hold of ``names`` (those still held): answer each now, as existing or not."""
        ts = self._types.get(CLUSTER)
        due = [n for n in names if n in self._on_hold]
        for name in due:
            del self._on_hold[name]
        if ts is None or not due:
            return []
        w = _Work()
        for name in due:
            if name in ts.names:
                self._force(ts, w, name)
        return self._emit({CLUSTER: w})

    # ----------------------------------------------------------- introspection

    @property
    def on_hold(self) -> tuple[str, ...]:
        """Clusters subscribed by name and not answered yet (on-demand hold), oldest first."""
        return tuple(self._on_hold)

    @property
    def warming(self) -> frozenset[str]:
        """Assignments of new clusters that listener and route changes are waiting for."""
        return frozenset(self._warming)

    def subscriptions(self, type_url: str) -> frozenset[str]:
        """Explicit subscriptions of a type (``"*"`` included when wildcard)."""
        ts = self._types.get(type_url)
        return frozenset(ts.names) if ts else frozenset()

    def known_versions(self, type_url: str) -> dict[str, str]:
        """What the server believes the client holds: name -> version."""
        ts = self._types.get(type_url)
        if ts is None:
            return {}
        return {n: v for n, v in ts.sent.items() if v is not None}

    def pending_nonces(self) -> dict[str, tuple[str, ...]]:
        """Un-ACKed nonces per type, oldest first."""
        return {t: tuple(ts.pending) for t, ts in self._types.items() if ts.pending}

    def pending_bytes(self) -> int:
        """Approximate size of the resources in un-ACKed responses."""
        return sum(p.nbytes for ts in self._types.values() for p in ts.pending.values())

    # --------------------------------------------------------------- internals

    def _on_ack(self, ts: _TypeState, nonce: str, error) -> None:
        p: _Pending | None = None
        if nonce in ts.pending:
            # this nonce and every older one of the type are answered
            while ts.pending:
                k = next(iter(ts.pending))
                p = ts.pending.pop(k)
                if ts.limbo:
                    for name in [n for n, at in ts.limbo.items() if at == k]:
                        del ts.limbo[name]  # processed while unsubscribed: ignored
                if self._warming:
                    self._settle_warming(ts, p)
                if k == nonce:
                    break
                ts.apply_acked(p)  # an older response, processed in order before this one
        else:
            self.stale_nonce_count += 1
        if error is None:
            if p is not None:
                self.ack_count += 1
                ts.apply_acked(p)
                if self._learned is not None:
                    self._learned.append(Acked(ts.type_url, nonce, dict(ts.acked)))
            return
        nack = Nack(
            stream_id=self.stream_id,
            node_id=self.node_id,
            type_url=ts.type_url,
            nonce=nonce[:CLIENT_TEXT_MAX],  # the client's own text when it is not one of ours
            code=error.code,
            message=error.message[:CLIENT_TEXT_MAX],
            resources=p.resources if p else (),
            removed=p.removed if p else (),
            stale=p is None,
        )
        self._record_nack(nack)

    def _desired(self, ts: _TypeState, view_t, name: str) -> VersionedResource | None:
        """The resource the client should hold under ``name``, or None."""
        if ts.wildcard and self._wildcard_allowed:
            return view_t.get(name)
        if name in ts.names and name != WILDCARD and self._permits(ts.type_url, name):
            return view_t.get(name)
        return None

    def _force(self, ts: _TypeState, w: _Work, name: str) -> None:
        res = self._desired(ts, self._view_of(ts.type_url), name)
        if res is not None:
            w.upsert(res)
        else:
            w.remove(name)

    def _full_diff(self, ts: _TypeState, w: _Work) -> None:
        """Everything that differs between the client's model and its scope (``_desired``, inlined: this runs
        for every stream a change reaches)."""
        t = ts.type_url
        view_t = self._view_of(t)
        sent = ts.sent
        upserts, removals = w.upserts, w.removals
        if ts.wildcard and self._wildcard_allowed:
            for name, res in view_t.items():
                if sent.get(name) != res.version:
                    upserts[name] = res
                    removals.discard(name)
            for name, version in sent.items():
                if version is not None and name not in view_t:
                    w.remove(name)
            return
        names = ts.names
        allowed = self._allowed  # None: every name is permitted
        for name in names:
            if name == WILDCARD or (allowed is not None and not allowed(t, name)):
                continue
            res = view_t.get(name)
            if res is not None and sent.get(name) != res.version:
                upserts[name] = res
                removals.discard(name)
        for name, version in sent.items():
            if version is not None and (name not in view_t or name not in names or name == WILDCARD
                                        or (allowed is not None and not allowed(t, name))):
                w.remove(name)

    def _subscriptions(self, ts: _TypeState, req, work: dict[str, _Work]) -> None:
        if ts.seen and not req.resource_names_subscribe and not req.resource_names_unsubscribe:
            return  # an ACK (or NACK) alone changes no subscription
        subs = list(req.resource_names_subscribe)
        sub_set = set(subs)
        unsubs = [n for n in req.resource_names_unsubscribe if n not in sub_set]
        if not ts.seen:
            ts.seen = True
            w = work.setdefault(ts.type_url, _Work())
            if not subs and not unsubs:
                ts.names.add(WILDCARD)  # legacy wildcard
            ts.names.update(sub_set)
            irv = req.initial_resource_versions
            for name, version in irv.items():
                ts.record(name, version)
                ts.acked[name] = version  # what it kept from before the reconnect
            self._full_diff(ts, w)
            ts.dirty = False
            for name in sub_set:
                if name != WILDCARD and name not in irv and not self._put_on_hold(ts, name):
                    self._force(ts, w, name)
            if ts.type_url == ENDPOINT and self._eds_owed:
                view_e = self._view_of(ENDPOINT)
                for name in self._eds_owed:
                    cla = self._desired(ts, view_e, name)
                    if cla is not None:
                        w.upsert(cla)
                self._eds_owed.clear()
            w.always = ts.wildcard
            return
        if not subs and not unsubs:
            return
        # First the new subscription state, then what to answer, judged on the
        # state after the whole request (e.g. {"sub": ["x"], "unsub": ["*"]}).
        w = work.setdefault(ts.type_url, _Work())
        ts.names.update(sub_set)
        dropped = [n for n in unsubs if n in ts.names]
        ts.names.difference_update(dropped)
        if WILDCARD in dropped:
            view_t = self._view_of(ts.type_url)
            for held, version in list(ts.sent.items()):
                if held not in ts.names:
                    self._drop_held(ts, held)  # the client drops what only "*" gave it
                elif version is not None and self._desired(ts, view_t, held) is None:
                    w.remove(held)  # explicit, but only the wildcard allowed it
        for name in dropped:
            if name == WILDCARD:
                continue
            self._on_hold.pop(name, None)
            if ts.wildcard:
                self._force(ts, w, name)  # spec: resend it, or report it removed
            else:
                self._drop_held(ts, name)
        if WILDCARD in sub_set:
            w.always = True
            if self._wildcard_allowed:
                for res in self._view_of(ts.type_url).values():
                    w.upsert(res)
            for name in ts.limbo:  # may be kept by the client after all
                if name not in w.upserts:
                    self._force(ts, w, name)
            ts.limbo.clear()
        for name in sub_set:
            if name != WILDCARD:
                ts.limbo.pop(name, None)
                if not self._put_on_hold(ts, name):
                    self._force(ts, w, name)

    def _put_on_hold(self, ts: _TypeState, name: str) -> bool:
        """Put a missing cluster on hold instead of answering it (see "On-demand hold")."""
        if (self._hold_missing is None or ts.type_url != CLUSTER or name in self._view_of(CLUSTER)
                or not self._hold_missing(name)):
            return False
        if name not in self._on_hold:
            if len(self._on_hold) >= MAX_HELD:
                return False
            self._on_hold[name] = None
            self._newly_on_hold.append(name)
        return True

    def _drop_held(self, ts: _TypeState, name: str) -> None:
        """The client unsubscribed ``name``: stop tracking it (no response)."""
        ts.forget(name)
        ts.acked.pop(name, None)
        for p in reversed(ts.pending.values()):
            if name in p.names:
                ts.limbo[name] = p.nonce
                break

    def _collect_dirty(self, work: dict[str, _Work]) -> None:
        cds = self._types.get(CLUSTER)
        if cds is not None and cds.seen and cds.dirty:
            cds.dirty = False
            self._full_diff(cds, work.setdefault(CLUSTER, _Work()))
            self._note_new_clusters(cds, work[CLUSTER])
        if self._warming:
            clusters = self._view_of(CLUSTER)
            for cla, cluster in list(self._warming.items()):
                if cluster not in clusters:  # gone again: nothing can route to it
                    del self._warming[cla]
        for t, ts in self._types.items():
            if t == CLUSTER or not ts.seen or not ts.dirty:
                continue
            if self._warming and t in _HELD_WHILE_WARMING:
                continue  # stays dirty: sent once the new clusters have their endpoints
            ts.dirty = False
            self._full_diff(ts, work.setdefault(t, _Work()))

    def _note_new_clusters(self, cds: _TypeState, w: _Work) -> None:
        """Remember the new EDS clusters in ``w`` whose assignment the client has yet to ask for."""
        eds = self._types.get(ENDPOINT)
        if eds is None or not eds.seen:
            return  # no EDS on this stream yet (a first connection): Envoy asks LDS only once clusters warmed
        view_e = self._view_of(ENDPOINT)
        for name, res in w.upserts.items():
            cla = res.eds_name
            if cla is None or cds.sent.get(name) is not None:
                continue  # not EDS, or an update: the old cluster serves while the new one warms
            if cla not in view_e or cla in eds.names or eds.wildcard:
                # no assignment to wait for, or the client's subscription already decides what it gets
                # in this very batch (sent with the cluster, or refused): no request is coming for it
                continue
            self._warming[cla] = name

    def _settle_warming(self, ts: _TypeState, p: _Pending) -> None:
        """An answered response may end the wait for new clusters' assignments."""
        if ts.type_url == ENDPOINT:
            for name in (*p.names, *p.removed):
                self._warming.pop(name, None)
        elif ts.type_url == CLUSTER:
            eds = self._types.get(ENDPOINT)
            asked = eds.names if eds is not None else set()
            for cla, cluster in list(self._warming.items()):
                # Envoy subscribes to a new cluster's assignment before it ACKs the cluster;
                # one that did not is not going to, and must not stall listeners and routes
                if cluster in p.names and cla not in asked:
                    del self._warming[cla]

    def _add_eds_companions(self, work: dict[str, _Work]) -> None:
        cds = work.get(CLUSTER)
        if cds is None or not cds.upserts:
            return
        eds = self._types.get(ENDPOINT)
        if eds is None or not eds.seen:
            # Reconnect: CDS is asked before EDS, and EDS then lists the
            # unchanged assignments in initial_resource_versions. Remember to
            # send them anyway, or the updated clusters never finish warming.
            self._eds_owed.update(n for n in (r.eds_name for r in cds.upserts.values()) if n is not None)
            return
        view_e = self._view_of(ENDPOINT)
        for res in cds.upserts.values():
            name = res.eds_name
            if name is None:
                continue
            cla = self._desired(eds, view_e, name)
            if cla is None:
                continue
            w = work.setdefault(ENDPOINT, _Work())
            if name not in w.removals:
                w.upsert(cla)

    def _emit(self, work: dict[str, _Work]) -> list[DeltaResponse]:
        if not work:
            return []
        if len(work) == 1:
            # one type (a change of one type, an answer to one request): one response, upserts and removals
            # merged, as ``order_segments`` would merge them -- unless clusters bring their assignments along
            ((t, w),) = work.items()
            if t != CLUSTER or not w.upserts:
                if w.upserts or w.always or w.removals:
                    return [self._build(t, w.upserts, w.removals)]
                return []
        self._add_eds_companions(work)
        ups: dict[str, tuple[dict[str, VersionedResource], set[str]]] = {}
        rems: dict[str, tuple[dict[str, VersionedResource], set[str]]] = {}
        for t, w in work.items():
            if w.upserts or w.always:
                ups[t] = (w.upserts, set())
            if w.removals:
                rems[t] = ({}, w.removals)
        segments = order_segments(ups, rems, lambda a, b: ({**a[0], **b[0]}, a[1] | b[1]))
        return [self._build(t, u, r) for t, (u, r) in segments]

    def _build(self, t: str, upserts: dict[str, VersionedResource], removals: set[str]) -> DeltaResponse:
        ts = self._types[t]
        self._seq += 1
        nonce = f"{self.stream_id}-{self._seq}"
        nbytes = 0
        sent_pairs = []
        resources = [upserts[n] for n in sorted(upserts)] if len(upserts) > 1 else list(upserts.values())
        if self._on_hold and t == CLUSTER:
            for res in resources:
                self._on_hold.pop(res.name, None)  # answered: the view has it now
        # ts.record/ts.forget inlined (once per resource sent, on every stream): the digest is a sum mod 2**64
        sent, digest = ts.sent, ts.digest
        for res in resources:
            name, version = res.name, res.version
            old = sent.get(name)
            if old is not None:
                digest -= entry_hash(name, old)
            sent[name] = version
            digest += entry_hash(name, version)
            nbytes += res.size
            sent_pairs.append((name, version))
        removed = sorted(removals) if removals else []
        if removed:
            names = ts.names
            for n in removed:
                nbytes += len(n)
                old = sent.get(n)
                if old is not None:
                    digest -= entry_hash(n, old)
                if n in names:
                    sent[n] = None  # told it does not exist
                elif n in sent:
                    del sent[n]
        ts.digest = digest & _MASK64
        ts.pending[nonce] = _Pending(nonce, tuple(sent_pairs), tuple(removed), nbytes, frozenset(upserts))
        self.responses_sent += 1
        return DeltaResponse(t, nonce, digest_hex(ts.digest), resources, removed)
