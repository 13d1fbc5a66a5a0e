"""The gRPC shell around the sans-I/O stream machines.

Invariants:
- This module holds no mesh logic and no protocol logic: it moves requests
  into a ``DeltaStream``/``SotwStream`` and the machine's responses onto the
  wire. What to send is decided by the machine; what exists is decided by the
  projector (through the ``ViewCache``). Responses are written already
  serialized (delta ones from bytes each resource serialized once), so the
  ADS methods are registered with an identity response serializer.
- The view tail never waits for a stream: a view change only queues one
  "view changed" token per affected stream (never a second while one is
  pending); each stream then takes the latest view itself, so bursts coalesce
  and a slow stream costs nobody else.
- A stream whose client does not read its responses within
  ``write_timeout_s`` (checked for all streams by one task,
  ``xds_gateway.write_deadlines``: at most a quarter of it late) is ended
  with RESOURCE_EXHAUSTED instead of holding memory; the handler is gone
  within another ``write_timeout_s`` even if the status cannot be sent yet
  (it queues behind the unread response, so a
  client that reads again sees it, reconnects and resyncs cheaply with
  ``initial_resource_versions``). The headers ride with a first response of
  at most ``HEADERS_WITH_FIRST_RESPONSE_MAX`` bytes and go out on their own
  before a bigger one, so the status never needs them again.
- A node the view does not know (a proxyless gRPC client, or a sidecar whose
  registration the projector has not rendered yet) gets nothing by wildcard
  and only the proxyless resources it names; once the node appears in the
  view it is served its own view on the same stream.
- What a client sends is bounded before it is kept or logged: a node id
  longer than ``NODE_ID_MAX_LENGTH`` is refused (INVALID_ARGUMENT) on the
  first request; node ids, type URLs, nonces and NACK messages reach the log
  only through ``events.printable``; NACK lines are throttled per stream (a
  burst, then one per interval, with the count suppressed); metric labels
  never carry a client's text (``metrics.type_label``).
- With a ``SyncLog``, each stream reports its opening, what its machine learned
  from ACKs/NACKs and its closing (with why) to it; those calls never wait.
  The sync log's own work (building and appending records) waits while a view
  change is being fanned out (``fanning_out``: some stream holds a view-change
  token it has not taken), at most one sync window: what proxies are sent
  goes before the record of what they ACKed.
- Trust (with a ``TrustGuard``, i.e. TLS): a stream gets a node's view only
  if ``authz`` allows its certificate's identity that node, decided at the
  first request and again at every change of the node (its owner may
  change); a denied stream ends with ``PERMISSION_DENIED`` having received
  nothing of the node; a stream whose certificate is revoked is closed.
  Without a guard (``--insecure``) every stream is trusted, as before.
- On demand (with a ``LearnedSubscriptions``, delta streams of nodes in the
  view): a service cluster Envoy asks for by name that the node's view lacks
  is held by the machine; the shell hands it to the recorder (which appends
  the learned subscription, see ``xds_gateway.on_demand``) and ends the
  hold after ``hold_s`` seconds at most. Nothing about it is kept here: the
  answer comes from the view once the projector rendered the fact.
- The node's view is in memory before the stream is served: the shell takes
  a ``hold`` on it after the first request and awaits ``loaded`` (at once for
  the whole-mesh ``ViewCache``; ``xds_gateway.lazy_view`` loads it then),
  and releases the hold when the stream ends, however it ends.
- Admission: over a cap of ``GatewayLimits`` (streams per connection and per
  process here; per-stream caps in the protocol machine) the one stream
  ends with ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import defaultdict
from typing import Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from events import types
from events.printable import printable
from meshlog.logbounds import Throttle
from proxysync.compare import SYNCED, compare_type
from proxysync.table import TypeSync
from xds_gateway import metrics
from xds_gateway.protocol.common import Acked
from xds_gateway.admission import DEFAULT_LIMITS, GatewayLimits, StreamSlots
from xds_gateway.authz import ALLOW, DENY
from xds_gateway.guard import TrustGuard
from xds_gateway.on_demand import DEFAULT_HOLD_S, LearnedSubscriptions, may_learn
from xds_gateway.protocol.delta import DeltaStream
from xds_gateway.protocol.limits import Refused
from xds_gateway.protocol.sotw import SotwStream
from xds_gateway.sync_log import SyncLog
from xds_gateway.view_cache import ViewCache
from xds_gateway.write_deadlines import WriteDeadlines

log = logging.getLogger(__name__)

_EOF = object()
_VIEW = object()  # "the node's view changed": at most one queued per stream, so bursts coalesce
_OVERRUN = object()
_REVOKED = object()


class _HoldOver(tuple):
    """Inbox item: the on-demand hold of these cluster names is over."""

#: The longest node id a stream may carry is what a registration may name: a longer one can never be in the view.
NODE_ID_MAX_LENGTH = types.NODE_ID_MAX_LENGTH
#: The largest first response the stream's headers are sent with (in one batch); a bigger one is preceded by
#: the headers on their own. Well below HTTP/2's initial stream window (65,535 bytes, RFC 9113 6.9.2), which
#: no client can make smaller than the first response it has not read yet.
HEADERS_WITH_FIRST_RESPONSE_MAX = 16 * 1024
_MESSAGE_EXCERPT = 300  # characters of a NACK's error_detail.message that reach the log
NACK_LOG_BURST, NACK_LOG_INTERVAL_S = 5, 10.0  # per stream: NACK lines logged at once, then one per interval


class _FanOut:
    """How many streams hold a view-change token they have not taken yet: above 0, a view change is being
    fanned out (each stream's handler still has to build and write its response)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = 0


class _Inbox:
    """One queue per stream carrying client requests and view-change tokens, in arrival order.

    One consumer (the stream's handler) and no bound of its own (the reader
    checks ``len``, at most ``request_queue`` + a few tokens): a list and at
    most one waiting future, instead of an ``asyncio.Queue`` (four deques and
    an event per stream at 10k streams). A list, not a deque: a deque's first
    block alone is 600 bytes per stream, and taking from the front of a list
    this short costs nothing.
    """

    __slots__ = ("_items", "_waiter", "_changed_at", "_loop", "_fanout")

    def __init__(self, fanout: _FanOut) -> None:
        self._items: list = []
        self._waiter: asyncio.Future | None = None
        self._changed_at: float | None = None
        self._fanout = fanout  # counts this inbox's token while it is queued
        # the stream's loop, looked up once (asyncio.get_running_loop() makes a getpid() system call each time)
        self._loop = asyncio.get_running_loop()

    def put(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def __len__(self) -> int:
        return len(self._items)

    def view_changed(self, now: float) -> None:
        if self._changed_at is None:
            self._changed_at = now
            self._fanout.pending += 1
            self.put(_VIEW)

    def take_change(self) -> float | None:
        """The time of the oldest view change not taken yet (None: none); the token is taken (also when the stream
        ends with one queued, so the fan-out count never keeps a closed stream)."""
        changed_at, self._changed_at = self._changed_at, None
        if changed_at is not None:
            self._fanout.pending -= 1
        return changed_at


class _StreamMetrics:
    """A stream's response counters: the label children, resolved once per process (not per stream or response)."""

    __slots__ = ("kind", "bytes", "_by_type")
    _shared: dict[tuple[str, str], tuple] = {}  # (kind, type URL) -> children, for every stream

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bytes = _children(kind, "")[0]
        self._by_type = self._shared

    def sent(self, response, nbytes: int, changed_at: float | None) -> None:
        children = self._by_type.get((self.kind, response.type_url))
        if children is None:
            children = _children(self.kind, response.type_url)
        responses, resources, removals = children
        responses.inc()
        self.bytes.inc(nbytes)
        n = len(response.resources)
        if n:
            resources.inc(n)
        if self.kind == "delta":
            n = len(response.removed_resources)
            if n:
                removals.inc(n)
        if changed_at is not None:
            metrics.PUSH_LATENCY.observe(time.monotonic() - changed_at)


def _children(kind: str, type_url: str) -> tuple:
    """The label children of one kind and type (type "": the kind's bytes counter and streams gauge)."""
    got = _StreamMetrics._shared.get((kind, type_url))
    if got is None:
        if type_url:
            label = metrics.type_label(type_url)
            got = (metrics.RESPONSES.labels(kind, label), metrics.RESOURCES_SENT.labels(kind, label),
                   metrics.REMOVALS_SENT.labels(kind, label))
        else:
            got = (metrics.BYTES_SENT.labels(kind), metrics.STREAMS.labels(kind))
        _StreamMetrics._shared[(kind, type_url)] = got
    return got


_stream_ids = itertools.count(1)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: ViewCache, *, write_timeout_s: float = 30.0, request_queue: int = 64,
                 sync_log: SyncLog | None = None, limits: GatewayLimits = DEFAULT_LIMITS,
                 guard: TrustGuard | None = None, on_demand: LearnedSubscriptions | None = None,
                 hold_s: float = DEFAULT_HOLD_S):
        self.cache = cache
        self.on_demand = on_demand
        self.hold_s = hold_s
        self.sync_log = sync_log
        self.write_timeout_s = write_timeout_s
        self._write_deadlines = WriteDeadlines(write_timeout_s)
        self.request_queue = request_queue
        self.limits = limits
        self.guard = guard
        self._slots = StreamSlots(limits)
        self._watchers: dict[str, set[_Inbox]] = defaultdict(set)
        self._unknown_watchers: set[_Inbox] = set()
        self._streams: set[asyncio.Task] = set()
        self._closing = False
        self._fanout = _FanOut()
        cache.subscribe(self._on_view_change)
        if sync_log is not None:
            # recording what proxies ACKed waits while a view change is being sent (bounded by the sync log)
            sync_log.defer_while(self.fanning_out)

    def fanning_out(self) -> bool:
        """Is a view change being fanned out: some stream has yet to take it (build and write its response)?"""
        return self._fanout.pending > 0

    def begin_shutdown(self) -> None:
        """Streams ending from now on end because the gateway stops (so the sync log says)."""
        self._closing = True

    # ------------------------------------------------------------ view fan-out (never blocks)

    def _on_view_change(self, nodes: set[str]) -> None:
        metrics.VIEW_CHANGES.inc()
        now = time.monotonic()
        for node in nodes:
            for inbox in self._watchers.get(node, ()):
                inbox.view_changed(now)
        # unknown nodes watch the shared resources and wait to become known
        if self._unknown_watchers and (self.cache.shared_changed or nodes):
            for inbox in self._unknown_watchers:
                inbox.view_changed(now)

    def _view_for(self, node_id: str, known: bool = True):
        if known and self.cache.knows_node(node_id):
            return self.cache.node_view(node_id)
        return self.cache.shared_view()

    def _authorized(self, peer, node_id: str):
        """Is the node known and may this stream have it: (known, decision); decision None without a guard."""
        known = self.cache.knows_node(node_id)
        if self.guard is None:
            return known, None
        decision = self.guard.decide(peer, node_id, self.cache.owner_of(node_id))
        return known and decision.outcome == ALLOW, decision

    # ------------------------------------------------------------ RPCs

    # Both RPCs use context.read()/write() rather than the request iterator and
    # yield: writes then have a deadline, which is how a stalled client is shed.
    async def DeltaAggregatedResources(self, request_iterator, context) -> None:
        await self._serve("delta", context)

    async def StreamAggregatedResources(self, request_iterator, context) -> None:
        await self._serve("sotw", context)

    async def _serve(self, kind: str, context) -> None:
        connection = context.peer()
        try:
            self._slots.take(connection)
        except Refused as exc:
            metrics.REFUSED.labels(exc.limit).inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.detail)
        view_holds: list[Callable[[], None]] = []  # released however the stream ends
        try:
            await self._serve_admitted(kind, context, view_holds, connection)
        finally:
            for release in view_holds:
                release()
            self._slots.give_back(connection)

    async def _serve_admitted(self, kind: str, context, view_holds: list, connection: str) -> None:
        peer = None
        if self.guard is not None:
            peer = self.guard.identify(context.auth_context())
            if peer.refusal is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, peer.refusal.detail)
        stream_id = f"{os.getpid()}-{next(_stream_ids)}"
        inbox = _Inbox(self._fanout)
        handler = asyncio.current_task()  # the task writing this stream's responses

        async def read_requests() -> None:
            try:
                while True:
                    request = await context.read()
                    if request is grpc.aio.EOF:
                        break
                    if len(inbox) >= self.request_queue:
                        # the client sends faster than we answer: shed it rather than buffer without bound
                        inbox.put(_OVERRUN)
                        return
                    inbox.put(request)
            except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.RpcError):
                pass
            finally:
                inbox.put(_EOF)

        reader = asyncio.create_task(read_requests())
        first = await inbox.get()
        if first is _EOF or first is _OVERRUN:
            reader.cancel()
            return
        node_id = first.node.id
        if not node_id:
            reader.cancel()
            metrics.REFUSED.labels("no_node_id").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        if len(node_id) > NODE_ID_MAX_LENGTH:
            reader.cancel()
            metrics.REFUSED.labels("node_id_too_long").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"node.id is {len(node_id)} characters long; at most {NODE_ID_MAX_LENGTH} are accepted")
        shown_node = printable(node_id, NODE_ID_MAX_LENGTH)  # escaped for the log
        # the node's view in memory before anything is decided or served from it (a lazy cache loads it now;
        # the tail and other streams go on meanwhile)
        view_holds.append(self.cache.hold(node_id))
        await self.cache.loaded(node_id)
        nack_log = Throttle(burst=NACK_LOG_BURST, interval=NACK_LOG_INTERVAL_S)
        known, decision = self._authorized(peer, node_id)
        if decision is not None and decision.outcome == DENY:
            reader.cancel()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.detail)
        release = self.guard.hold(peer, lambda: inbox.put(_REVOKED)) if self.guard else None
        machine = self._new_machine(kind, stream_id, node_id, known)
        (self._watchers[node_id] if known else self._unknown_watchers).add(inbox)
        counters = _StreamMetrics(kind)
        _children(kind, "")[1].inc()
        log.info("%s stream %s opened by node %s (%s)", kind, stream_id, shown_node, "known" if known else "not in the view")
        sync = self.sync_log
        if sync is not None:
            sync.opened(stream_id, node_id, kind, connection,
                        peer.identity.uri if peer is not None and peer.identity is not None else None)
        close_reason = "error"
        headers_sent = False
        # per type, the source event whose views this stream's proxy was last seen to ACK (convergence metric);
        # what was current when the stream opened is not measured (it may be hours old)
        converged: dict[str, int | None] = {}
        opened_source = self.cache.source_ms(node_id)
        hold_timers: list[asyncio.TimerHandle] = []
        try:
            item = first
            while True:
                changed_at = None
                if item is _EOF:
                    close_reason = "client_closed"
                    return
                if item is _OVERRUN:
                    close_reason = "too_many_requests"
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many unanswered requests")
                if item is _REVOKED:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate revoked")
                if item is _VIEW:
                    changed_at = inbox.take_change()
                    if self.guard is not None:
                        # the node's owner may have changed (or appeared): decide again before serving it
                        allowed, decision = self._authorized(peer, node_id)
                        if decision.outcome == DENY:
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, decision.detail)
                    else:
                        allowed = self.cache.knows_node(node_id)
                    if not known and allowed:
                        # the node's registration was rendered: serve its own view from now on
                        known = True
                        self._unknown_watchers.discard(inbox)
                        self._watchers[node_id].add(inbox)
                        machine.set_scope(allowed=None, wildcard_allowed=True)
                        log.info("%s stream %s: node %s now in the view", kind, stream_id, shown_node)
                    responses = machine.on_view(self._view_for(node_id, known))
                elif isinstance(item, _HoldOver):
                    responses = machine.release_hold(item)
                else:
                    if log.isEnabledFor(logging.DEBUG):
                        subscribe = item.resource_names_subscribe if kind == "delta" else item.resource_names
                        unsubscribe = item.resource_names_unsubscribe if kind == "delta" else ()
                        log.debug("%s stream %s <- %s nonce=%s sub=%s unsub=%s%s", kind, stream_id,
                                  printable(_short(item.type_url), 80), printable(item.response_nonce, 80),
                                  _names(subscribe), _names(unsubscribe), " NACK" if item.HasField("error_detail") else "")
                    try:
                        responses = machine.on_request(item)
                    except Refused as exc:
                        metrics.REFUSED.labels(exc.limit).inc()
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.detail)
                    self._log_nack(kind, stream_id, shown_node, item, nack_log)
                    if self.on_demand is not None and kind == "delta":
                        held = machine.take_on_hold()
                        if held:
                            self._learn(node_id, held, inbox, hold_timers)
                    if sync is not None:
                        learned = machine.take_learned()
                        if learned:
                            sync.learned(stream_id, learned)
                            self._observe_convergence(node_id, learned, converged, opened_source)
                if responses and log.isEnabledFor(logging.DEBUG):
                    for r in responses:
                        log.debug("%s stream %s -> %s nonce=%s resources=%s removed=%s", kind, stream_id,
                                  _short(r.type_url), r.nonce,
                                  [x.name for x in r.resources][:8] if kind == "delta" else len(r.resources),
                                  list(r.removed_resources) if kind == "delta" else [])
                for response in responses:
                    # delta: assembled from each resource's bytes, serialized once for every stream
                    payload = response.encode() if kind == "delta" else response.SerializeToString()
                    if not headers_sent:
                        # grpc aio marks the headers sent only when a write completes, so after a first
                        # write the timeout cancelled, abort() would send them again in its own batch and
                        # grpc core refuses that (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS): the client would
                        # never get the status. A first response that fits in a new stream's HTTP/2
                        # window completes without the client reading, so the headers ride with it (one
                        # grpc batch and one send less per stream); a bigger one may wait on flow
                        # control, so the headers go out on their own before it (they are not
                        # flow-controlled: this cannot stall). (Only a connection whose other streams
                        # used up its shared window -- a multiplexing client that stopped reading
                        # altogether -- can hold a small first response: that stream is then cancelled
                        # rather than told, see _abort_behind_stalled_write.)
                        if len(payload) > HEADERS_WITH_FIRST_RESPONSE_MAX:
                            await context.send_initial_metadata(())
                        headers_sent = True
                    try:
                        await self._write_deadlines.write(context, payload, handler)
                    except TimeoutError:
                        metrics.SLOW_STREAMS_CLOSED.inc()
                        close_reason = "slow_client"
                        log.warning("%s stream %s (node %s) did not read for %.0fs: closing it", kind, stream_id,
                                    shown_node, self.write_timeout_s)
                        await _abort_behind_stalled_write(context, self.write_timeout_s)
                    counters.sent(response, len(payload), changed_at)
                # nothing of what was sent stays referenced by this frame while it waits (10k streams wait)
                payload = responses = response = None
                item = await inbox.get()
        except asyncio.CancelledError:
            # grpc cancels the handler when the client resets the stream or its connection drops
            if close_reason == "error":
                close_reason = "client_closed"
            raise
        finally:
            for timer in hold_timers:
                timer.cancel()
            if release is not None:
                release()
            watch_set = self._watchers.get(node_id)
            if watch_set is not None:
                watch_set.discard(inbox)
                if not watch_set:
                    self._watchers.pop(node_id, None)
            self._unknown_watchers.discard(inbox)
            inbox.take_change()  # a token still queued is no longer a fan-out in progress
            reader.cancel()
            _children(kind, "")[1].dec()
            if sync is not None:
                sync.closed(stream_id, "gateway_stopping" if self._closing else close_reason)
            suppressed = f"; {nack_log.suppressed} NACK lines not logged" if nack_log.suppressed else ""
            log.info("%s stream %s closed (node %s%s)", kind, stream_id, shown_node, suppressed)

    def _observe_convergence(self, node_id: str, learned, converged: dict, opened_source: int | None) -> None:
        """Append-to-ACK time: once per type and source event, when an ACK makes the proxy hold its view."""
        source = self.cache.source_ms(node_id)
        if source is None:
            return
        for fact in learned:
            if not isinstance(fact, Acked) or converged.get(fact.type_url, opened_source) == source:
                continue
            told = self.cache.told_versions(node_id, fact.type_url)
            if compare_type(fact.type_url, told, TypeSync(held=fact.held, acked_ms=0), None).state == SYNCED:
                converged[fact.type_url] = source
                metrics.CONVERGENCE.labels(fact.type_url).observe(max(0.0, time.time() - source / 1000))

    def _learn(self, node_id: str, held: list[str], inbox: _Inbox, timers: list[asyncio.TimerHandle]) -> None:
        """Record what the node's proxy asked for on demand, and bound the hold of its request."""
        owner = self.cache.owner_of(node_id)
        for cluster in held:
            self.on_demand.learned(owner, cluster)
        timers[:] = [h for h in timers if not h.cancelled() and h.when() > asyncio.get_running_loop().time()]
        timers.append(asyncio.get_running_loop().call_later(self.hold_s, inbox.put, _HoldOver(held)))

    def _new_machine(self, kind: str, stream_id: str, node_id: str, known: bool):
        view = self._view_for(node_id, known)
        allowed: Callable[[str, str], bool] | None = None if known else self.cache.proxyless_allowed
        if kind == "delta":
            hold: Callable[[str], bool] | None = None
            if self.on_demand is not None:
                def hold_if_known(cluster: str) -> bool:  # only a node in the view has an instance to record it for
                    return self.cache.knows_node(node_id) and may_learn(cluster)
                hold = hold_if_known
            return DeltaStream(stream_id, view, allowed=allowed, wildcard_allowed=known,
                               report_sync=self.sync_log is not None, limits=self.limits.stream, hold_missing=hold)
        return SotwStream(stream_id, view, allowed=allowed, wildcard_allowed=known, report_sync=self.sync_log is not None,
                          limits=self.limits.stream)

    @staticmethod
    def _log_nack(kind: str, stream_id: str, shown_node: str, request, throttle: Throttle) -> None:
        if request.HasField("error_detail") and request.error_detail.message:
            metrics.NACKS.labels(kind, metrics.type_label(request.type_url)).inc()
            suppressed = throttle.admit(time.monotonic())
            if suppressed is None:
                return
            log.warning("%s stream %s: node %s NACKed %s (nonce %s): %s%s", kind, stream_id, shown_node,
                        printable(request.type_url, 120), printable(request.response_nonce, 80),
                        printable(request.error_detail.message, _MESSAGE_EXCERPT),
                        f" [{suppressed} NACK lines of this stream not logged before this one]" if suppressed else "")


async def _abort_behind_stalled_write(context, timeout_s: float) -> None:
    """End a stream whose client stopped reading with RESOURCE_EXHAUSTED; never returns.

    The status queues in grpc core behind the response the client is not
    reading, and ``abort`` waits until it is sent. So the wait is bounded too:
    past it the handler ends (as if cancelled, which grpc logs only at debug
    level) and frees the stream's inbox and machine, while the status stays
    queued -- a client that reads again gets the response, then the status, and
    reconnects. One that never reads keeps its HTTP/2 stream and the unsent
    response in grpc core (not in the gateway) until its connection closes.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream too slow; reconnect")
    except TimeoutError:
        raise asyncio.CancelledError("status queued behind a response the client does not read") from None
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # noqa: BLE001 - grpc refused the status batch: end the handler all the same
        # (a small first response that did not complete: its headers are queued behind it, so grpc core
        # refuses the status's; the call is cancelled instead, and the client reconnects)
        raise asyncio.CancelledError(f"status not accepted by grpc ({type(exc).__name__})") from None


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def _names(names) -> str:
    """A client's resource name list for a DEBUG line: its length and a bounded excerpt."""
    return f"{len(names)}[{printable(', '.join(itertools.islice(names, 20)), 300)}]"


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _already_serialized(payload: bytes) -> bytes:
    return payload


def add_to_server(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Register the ADS methods; the handlers write responses already serialized (identity serializer)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_already_serialized),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources, request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_already_serialized),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
    server.add_registered_method_handlers(ADS_SERVICE, handlers)


__all__ = ["AdsServicer", "add_to_server", "discovery_pb2"]
