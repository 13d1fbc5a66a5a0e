"""Transport-level admission limits of one gateway process.

``GatewayLimits`` gathers every cap (flags of ``xds-gateway run``; defaults
documented in the README): the per-stream ones the protocol machines enforce
(``stream``, see ``xds_gateway.protocol.limits``), and the ones only the
shell can see:

- ``max_streams_per_connection``: ADS streams open at once on one HTTP/2
  connection (Envoy and grpcio open one; a bench client multiplexes more).
- ``max_streams``: ADS streams open at once in the process.
- ``max_request_bytes``: the largest request message accepted
  (``grpc.max_receive_message_length``; gRPC fails just that stream with
  ``RESOURCE_EXHAUSTED``).

Invariants:
- Going over a cap ends that one stream with ``RESOURCE_EXHAUSTED``; nothing
  else changes (``StreamSlots.take`` refuses before counting the stream).
- ``StreamSlots`` holds counts only for connections with open streams (a
  closed connection's entry goes with its last stream), so it is bounded by
  the number of open streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_gateway.protocol.limits import DEFAULT_STREAM_LIMITS, Refused, StreamLimits

__all__ = ["GatewayLimits", "StreamSlots", "DEFAULT_LIMITS"]


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_streams_per_connection: int = 16
    max_streams: int = 50_000
    max_request_bytes: int = 1 << 20
    stream: StreamLimits = field(default_factory=lambda: DEFAULT_STREAM_LIMITS)

    def __post_init__(self) -> None:
        for name in ("max_streams_per_connection", "max_streams", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


DEFAULT_LIMITS = GatewayLimits()


class StreamSlots:
    """Open streams per connection and in all; ``take`` refuses over a cap, ``give_back`` releases."""

    def __init__(self, limits: GatewayLimits) -> None:
        self.limits = limits
        self.open = 0
        self._by_connection: dict[str, int] = {}

    def take(self, connection: str) -> None:
        on_conn = self._by_connection.get(connection, 0)
        if on_conn >= self.limits.max_streams_per_connection:
            raise Refused("max_streams_per_connection", f"{on_conn} streams already open on this connection, "
                                                        f"at most {self.limits.max_streams_per_connection} allowed")
        if self.open >= self.limits.max_streams:
            raise Refused("max_streams", f"{self.open} streams already open on this gateway, "
                                         f"at most {self.limits.max_streams} allowed")
        self._by_connection[connection] = on_conn + 1
        self.open += 1

    def give_back(self, connection: str) -> None:
        left = self._by_connection.get(connection, 0) - 1
        if left > 0:
            self._by_connection[connection] = left
        else:
            self._by_connection.pop(connection, None)
        self.open -= 1
