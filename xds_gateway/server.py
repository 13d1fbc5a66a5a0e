"""The gRPC shell around the sans-I/O stream machines.

Invariants:
- This module holds no mesh logic and no protocol logic: it moves requests
  into a ``DeltaStream``/``SotwStream`` and the machine's responses onto the
  wire. What to send is decided by the machine; what exists is decided by the
  projector (through the ``ViewCache``).
- The view tail never waits for a stream: a view change only sets the
  affected streams' "dirty" events; each stream then takes the latest view
  itself (so bursts coalesce and a slow stream costs nobody else).
- A stream whose client does not read its responses within
  ``write_timeout_s`` is closed (the client reconnects and resyncs cheaply
  with ``initial_resource_versions``) instead of holding memory.
- A node the view does not know (a proxyless gRPC client, or a sidecar whose
  registration the projector has not rendered yet) gets nothing by wildcard
  and only the proxyless resources it names; once the node appears in the
  view it is served its own view on the same stream.
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

from xds_gateway import metrics
from xds_gateway.protocol.delta import DeltaStream
from xds_gateway.protocol.sotw import SotwStream
from xds_gateway.view_cache import ViewCache

log = logging.getLogger(__name__)

_EOF = object()
_stream_ids = itertools.count(1)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: ViewCache, *, write_timeout_s: float = 30.0, request_queue: int = 64):
        self.cache = cache
        self.write_timeout_s = write_timeout_s
        self.request_queue = request_queue
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._unknown_watchers: set[asyncio.Event] = set()
        self._streams: set[asyncio.Task] = set()
        self._closing = False
        cache.subscribe(self._on_view_change)

    # ------------------------------------------------------------ view fan-out (never blocks)

    def _on_view_change(self, nodes: set[str]) -> None:
        metrics.VIEW_CHANGES.inc()
        now = time.monotonic()
        for node in nodes:
            for event in self._watchers.get(node, ()):
                event.changed_at = getattr(event, "changed_at", None) or now  # type: ignore[attr-defined]
                event.set()
        # unknown nodes watch the shared resources and wait to become known
        if self._unknown_watchers and (self.cache.shared_changed or nodes):
            for event in self._unknown_watchers:
                event.changed_at = getattr(event, "changed_at", None) or now  # type: ignore[attr-defined]
                event.set()

    def _view_for(self, node_id: str):
        if self.cache.knows_node(node_id):
            return self.cache.node_view(node_id)
        return self.cache.shared_view()

    # ------------------------------------------------------------ RPCs

    # Both RPCs use context.read()/write() rather than the request iterator and
    # yield: writes then have a deadline, which is how a stalled client is shed.
    async def DeltaAggregatedResources(self, request_iterator, context) -> None:
        await self._serve("delta", context)

    async def StreamAggregatedResources(self, request_iterator, context) -> None:
        await self._serve("sotw", context)

    async def _serve(self, kind: str, context) -> None:
        stream_id = f"{os.getpid()}-{next(_stream_ids)}"
        requests: asyncio.Queue = asyncio.Queue(maxsize=self.request_queue)
        dirty = asyncio.Event()

        async def read_requests() -> None:
            try:
                while True:
                    request = await context.read()
                    if request is grpc.aio.EOF:
                        break
                    await requests.put(request)
            except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.RpcError):
                pass
            finally:
                try:
                    requests.put_nowait(_EOF)
                except asyncio.QueueFull:
                    pass  # the stream loop is behind; it ends when the RPC is torn down

        reader = asyncio.create_task(read_requests())
        first = await requests.get()
        if first is _EOF:
            reader.cancel()
            return
        node_id = first.node.id
        if not node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id")
        known = self.cache.knows_node(node_id)
        machine = self._new_machine(kind, stream_id, node_id, known)
        watch_set = self._watchers[node_id] if known else self._unknown_watchers
        watch_set.add(dirty)
        metrics.STREAMS.labels(kind).inc()
        log.info("%s stream %s opened by node %s (%s)", kind, stream_id, node_id, "known" if known else "not in the view")
        try:
            pending_request = first
            while True:
                if pending_request is not None:
                    request, pending_request = pending_request, None
                    if request is _EOF:
                        return
                    responses = machine.on_request(request)
                    self._log_nack(kind, node_id, request)
                    changed_at = None
                else:
                    get_request = asyncio.ensure_future(requests.get())
                    wait_dirty = asyncio.ensure_future(dirty.wait())
                    done, _ = await asyncio.wait({get_request, wait_dirty}, return_when=asyncio.FIRST_COMPLETED)
                    if get_request in done:
                        wait_dirty.cancel()
                        pending_request = get_request.result()
                        continue
                    get_request.cancel()
                    changed_at = getattr(dirty, "changed_at", None)
                    dirty.clear()
                    dirty.changed_at = None  # type: ignore[attr-defined]
                    if not known and self.cache.knows_node(node_id):
                        # the node's registration was rendered: serve its own view from now on
                        known = True
                        self._unknown_watchers.discard(dirty)
                        self._watchers[node_id].add(dirty)
                        machine.set_scope(allowed=None, wildcard_allowed=True)
                        log.info("%s stream %s: node %s now in the view", kind, stream_id, node_id)
                    responses = machine.on_view(self._view_for(node_id))
                for response in responses:
                    try:
                        await asyncio.wait_for(context.write(response), self.write_timeout_s)
                    except asyncio.TimeoutError:
                        metrics.SLOW_STREAMS_CLOSED.inc()
                        log.warning("%s stream %s (node %s) did not read for %.0fs: closing it", kind, stream_id,
                                    node_id, self.write_timeout_s)
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream too slow; reconnect")
                    metrics.RESPONSES.labels(kind, response.type_url).inc()
                    metrics.BYTES_SENT.labels(kind).inc(response.ByteSize())
                    metrics.RESOURCES_SENT.labels(kind, response.type_url).inc(len(response.resources))
                    if kind == "delta":
                        metrics.REMOVALS_SENT.labels(kind, response.type_url).inc(len(response.removed_resources))
                    if changed_at is not None:
                        metrics.PUSH_LATENCY.observe(time.monotonic() - changed_at)
        finally:
            watch_set = self._watchers.get(node_id)
            if watch_set is not None:
                watch_set.discard(dirty)
                if not watch_set:
                    self._watchers.pop(node_id, None)
            self._unknown_watchers.discard(dirty)
            reader.cancel()
            metrics.STREAMS.labels(kind).dec()
            log.info("%s stream %s closed (node %s)", kind, stream_id, node_id)

    def _new_machine(self, kind: str, stream_id: str, node_id: str, known: bool):
        view = self._view_for(node_id)
        allowed: Callable[[str, str], bool] | None = None if known else self.cache.proxyless_allowed
        cls = DeltaStream if kind == "delta" else SotwStream
        return cls(stream_id, view, allowed=allowed, wildcard_allowed=known)

    @staticmethod
    def _log_nack(kind: str, node_id: str, request) -> None:
        if request.HasField("error_detail") and request.error_detail.message:
            metrics.NACKS.labels(kind, request.type_url).inc()
            log.warning("node %s NACKed %s (nonce %s): %s", node_id, request.type_url, request.response_nonce,
                        request.error_detail.message)


def add_to_server(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)


__all__ = ["AdsServicer", "add_to_server", "discovery_pb2"]
