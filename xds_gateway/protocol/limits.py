"""Per-stream admission limits the protocol machines enforce (sans-I/O).

A client that goes over a limit is *refused*: the machine raises
:class:`Refused` from ``on_request`` and the shell ends that one stream with
``RESOURCE_EXHAUSTED`` (never the process). What each limit bounds:

- ``max_names_per_type``: explicit subscriptions of one type on the stream
  (delta: the names subscribed so far, ``*`` included; SotW: the list of one
  request, which replaces the previous one). A request whose own list is
  longer is refused before any state changes.
- ``max_initial_versions``: entries of one delta request's
  ``initial_resource_versions``; refused before any state changes.
- ``max_pending_nonces``: responses sent on the stream and not yet ACKed or
  NACKed, all types together. Each holds the names it carried until
  answered, so with the names cap this bounds a stream's memory (measured
  before the cap: 50 never-ACKed requests held 1M names in about 174 MB of
  one stream). Checked after the request is applied: the responses it would
  produce are not sent, the stream ends.

Envoy ACKs every response in order and keeps a handful pending (one batch is
at most eight responses); grpcio keeps one per type. The defaults sit well
above both and below anything that hurts a gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StreamLimits", "Refused", "DEFAULT_STREAM_LIMITS"]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_names_per_type: int = 10_000
    max_initial_versions: int = 10_000
    max_pending_nonces: int = 32

    def __post_init__(self) -> None:
        for name in ("max_names_per_type", "max_initial_versions", "max_pending_nonces"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


DEFAULT_STREAM_LIMITS = StreamLimits()


class Refused(Exception):
    """A request went over a stream limit: end the stream (``RESOURCE_EXHAUSTED``), answer nothing.

    ``limit`` is the limit's field name in :class:`StreamLimits` (a bounded
    label for metrics); ``detail`` says by how much, for the client and logs.
    """

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"{limit}: {detail}")
        self.limit = limit
        self.detail = detail
