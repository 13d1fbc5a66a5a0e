"""Prometheus metrics of one gateway process (exposed on its HTTP port at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

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
SLOW_STREAMS_CLOSED = Counter("meshlog_xds_slow_streams_closed_total", "Streams closed for not reading their responses")
RESOURCES_SENT = Counter("meshlog_xds_resources_sent_total", "Resources carried by xDS responses", ["kind", "type_url"])
REMOVALS_SENT = Counter("meshlog_xds_removals_sent_total", "Names carried in delta removed_resources", ["kind", "type_url"])
REFUSED = Counter("meshlog_xds_refused_total",
                  "Streams refused or ended: authentication/authorization reasons and admission limit names",
                  ["reason"])
REVOKED_STREAMS_CLOSED = Counter("meshlog_xds_revoked_streams_closed_total",
                                 "Open streams closed because their client certificate was revoked")
