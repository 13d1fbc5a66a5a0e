"""Prometheus metrics of one gateway process (exposed on its HTTP port at /metrics).

Invariant: every label value is chosen by the gateway, never taken from a
client. Each distinct label value is a new time series kept for the life of
the process, so a client's text as a label lets it grow /metrics without
bound (measured: 10k distinct NACKed ``type_url``s grew it from 8 KB to
5.8 MB). ``kind`` is "delta" or "sotw"; ``type_url`` goes through
``type_label``; node ids are never labels.
"""

from prometheus_client import Counter, Gauge, Histogram

from xds_gateway.protocol.resources import CORE_TYPES

#: the ``type_url`` label of every type this gateway does not serve
OTHER_TYPE = "other"
_SERVED_TYPES = frozenset(CORE_TYPES)  # what the stream machines serve (their default served_types)


def type_label(type_url: str) -> str:
    """The ``type_url`` label value: a type this gateway serves, else ``OTHER_TYPE``."""
    return type_url if type_url in _SERVED_TYPES else OTHER_TYPE


STREAMS = Gauge("meshlog_xds_streams", "Connected xDS streams", ["kind"])
RESPONSES = Counter("meshlog_xds_responses_total", "xDS responses sent", ["kind", "type_url"])
BYTES_SENT = Counter("meshlog_xds_response_bytes_total", "Serialized bytes of xDS responses sent", ["kind"])
NACKS = Counter("meshlog_xds_nacks_total", "Responses rejected by clients (error_detail set)", ["kind", "type_url"])
PUSH_LATENCY = Histogram(
    "meshlog_xds_push_latency_seconds",
    "From a view change seen by this gateway to the response written to a stream",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
VIEW_CHANGES = Counter("meshlog_view_changes_total", "Batches of view records that changed some node")
VIEW_LAG = Gauge("meshlog_view_tail_lag_seconds", "Now minus the broker timestamp of the newest view record applied")
# the last batch the view tail applied: when, the broker time of its newest record, and the append time of
# the newest event behind it (meshlog-source-ms); their differences are the tail's delay and append-to-gateway
VIEW_APPLIED_AT = Gauge("meshlog_view_tail_applied_timestamp_seconds", "Unix time the view tail last applied records")
VIEW_APPLIED_RECORD = Gauge("meshlog_view_tail_applied_record_timestamp_seconds",
                            "Broker timestamp of the newest view record in the last batch applied")
VIEW_APPLIED_SOURCE = Gauge("meshlog_view_tail_applied_source_timestamp_seconds",
                            "Append time of the newest event behind the last batch applied (meshlog-source-ms; 0 if none)")
SLOW_STREAMS_CLOSED = Counter("meshlog_xds_slow_streams_closed_total", "Streams closed for not reading their responses")
RESOURCES_SENT = Counter("meshlog_xds_resources_sent_total", "Resources carried by xDS responses", ["kind", "type_url"])
REMOVALS_SENT = Counter("meshlog_xds_removals_sent_total", "Names carried in delta removed_resources", ["kind", "type_url"])

# the sync log (xds_gateway.sync_log): what the proxies ACKed and NACKed, appended to meshlog.sync
SYNC_RECORDS = Counter("meshlog_sync_records_total", "Sync records appended to meshlog.sync", ["type"])
SYNC_DROPPED = Counter("meshlog_sync_records_dropped_total", "Sync records dropped, by reason", ["reason"])
SYNC_COALESCED = Counter("meshlog_sync_facts_coalesced_total",
                         "ACK/NACK facts replaced by a later one of the same stream and type within a window")
CONVERGENCE = Histogram(
    "meshlog_xds_convergence_seconds",
    "From the append of the event that changed a view to the proxy's ACK of the changed resources, per type",
    ["type_url"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

REFUSED = Counter("meshlog_xds_refused_total",
                  "Streams refused or ended: authentication/authorization reasons and admission limit names",
                  ["reason"])
REVOKED_STREAMS_CLOSED = Counter("meshlog_xds_revoked_streams_closed_total",
                                 "Open streams closed because their client certificate was revoked")
