"""Sans-I/O xDS protocol cores: one state machine per ADS stream.

No asyncio, no gRPC, no clock. The gateway shell feeds requests and view
changes in and writes the returned responses out, in order.

- :class:`DeltaStream` -- ``DeltaAggregatedResources`` (incremental ADS)
- :class:`SotwStream` -- ``StreamAggregatedResources`` (state of the world)
- :class:`VersionedResource`, :func:`make_resource`, ``NodeView`` -- inputs
- :class:`DeltaResponse` -- a delta machine's output, encoded from bytes made once per resource
"""

from .common import Nack, ProtocolError
from .delta import DeltaStream
from .limits import DEFAULT_STREAM_LIMITS, Refused, StreamLimits
from .resources import (
    CLUSTER,
    CORE_TYPES,
    ENDPOINT,
    LISTENER,
    ROUTE,
    WILDCARD,
    NodeView,
    VersionedResource,
    make_resource,
    version_of,
)
from .sotw import WILDCARD_TYPES, SotwStream
from .wire import DeltaResponse

__all__ = [
    "CLUSTER",
    "DEFAULT_STREAM_LIMITS",
    "CORE_TYPES",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "WILDCARD",
    "WILDCARD_TYPES",
    "DeltaResponse",
    "DeltaStream",
    "Nack",
    "NodeView",
    "ProtocolError",
    "Refused",
    "SotwStream",
    "StreamLimits",
    "VersionedResource",
    "make_resource",
    "version_of",
]
