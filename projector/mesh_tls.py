"""Sidecar-to-sidecar mTLS and RBAC: the Envoy v3 pieces render adds for a sidecar with a mesh identity.

A sidecar registered with ``sidecar.trust_domain`` (its agent holds a
``spiffe://<domain>/sidecar/<service>/<instance>`` certificate) gets:

- on its inbound listener, a ``DownstreamTlsContext`` requiring a client
  certificate chaining to the mesh root, and an RBAC policy admitting exactly
  the principals ``allowed_principals`` names: the services that depend on
  the listener's service (declared or subscribed), plus what its access
  policy opens, plus the health checkers. Anything else is denied (HTTP 403,
  counted in Envoy's ``http.inbound.rbac.denied``; TCP: the connection is
  closed, ``inbound_tcp.rbac.denied``). HTTP and gRPC: the listener's HCM
  has an RBAC filter that denies everyone by itself (``rbac_http_filter``),
  and the policy is the ``RBACPerRoute`` of the virtual host of the
  sidecar's inbound route configuration, delivered over RDS
  (``rbac_per_route``), so a new caller is admitted from its next request,
  on connections already open too. TCP: a network RBAC filter in the
  listener (``rbac_network_filter``; per connection);
- on every cluster of a service whose latest registration has a trust
  domain, an ``UpstreamTlsContext`` presenting the sidecar's certificate and
  accepting only a server whose URI SAN is ``spiffe://<domain>/sidecar/<service>/``;
- TLS 1.3 only, on both ends (so a caller's certificate is never sent in
  clear, as TLS 1.2 sends it).

Certificates reach Envoy by file-watched SDS: the agent writes
``SDS_DIR/WORKLOAD_FILE`` (certificate and key) and ``SDS_DIR/TRUST_FILE``
(the mesh root) and replaces them by atomic rename when it renews
(``proxy.sds``). The paths are *relative* to Envoy's working directory, which
the agent sets to its own work dir: so one rendered cluster serves every
node (clusters are shared resources) while each Envoy reads its own files.

Invariants: every builder is pure and fills fields in a fixed order (the
version of a resource is the hash of its deterministic serialization);
principals are sorted; the same inputs give the same bytes.
"""

from __future__ import annotations

from functools import lru_cache

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_network_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, wrappers_pb2

from projector.addressing import allowed_principals, sidecar_prefix  # noqa: F401 - re-exported: one definition
from projector.render_envoy import pack as _pack

# the contract with the sidecar agent (proxy.sds writes these files, Envoy runs in the agent's work dir)
SDS_DIR = "sds"
WORKLOAD_SECRET = "meshlog_workload"
TRUST_SECRET = "meshlog_trust"
WORKLOAD_FILE = "workload.json"
TRUST_FILE = "trust.json"

TLS_SOCKET = "envoy.transport_sockets.tls"
RBAC_HTTP_FILTER = "envoy.filters.http.rbac"
RBAC_NETWORK_FILTER = "envoy.filters.network.rbac"
POLICY_NAME = "callers"



def _sds(name: str, file_name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(
                path=f"{SDS_DIR}/{file_name}", watched_directory=base_pb2.WatchedDirectory(path=SDS_DIR)
            ),
            resource_api_version=config_source_pb2.V3,
        ),
    )


# Both ends are Envoys of this mesh, so nothing older is needed. Envoy's client default is TLS 1.2 at most, and in
# TLS 1.2 the client certificate (the caller's SPIFFE id, i.e. which service calls which) crosses the wire in clear
# text; TLS 1.3 encrypts it, and needs one round trip less per new connection.
_TLS_1_3_ONLY = common_pb2.TlsParameters(
    tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
)


def _common(san_prefix: str | None) -> tls_pb2.CommonTlsContext:
    validation = common_pb2.CertificateValidationContext()
    if san_prefix is not None:
        validation.match_typed_subject_alt_names.append(
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(prefix=san_prefix)
            )
        )
    return tls_pb2.CommonTlsContext(
        tls_params=_TLS_1_3_ONLY,
        tls_certificate_sds_secret_configs=[_sds(WORKLOAD_SECRET, WORKLOAD_FILE)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=_sds(TRUST_SECRET, TRUST_FILE),
        ),
    )


@lru_cache(maxsize=4096)
def upstream_transport_socket(domain: str, service: str) -> base_pb2.TransportSocket:
    """A cluster's mTLS to ``service``'s sidecars: our certificate, their SPIFFE id (cached; copy, never modify)."""
    ctx = tls_pb2.UpstreamTlsContext(common_tls_context=_common(sidecar_prefix(domain, service)))
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=_pack(ctx))


@lru_cache(maxsize=1)
def downstream_transport_socket() -> base_pb2.TransportSocket:
    """An inbound listener's TLS: our certificate, a client certificate of the mesh root required."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(None), require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=_pack(ctx))


def _rbac_rules(principals: tuple[str, ...]) -> rbac_config_pb2.RBAC:
    policy = rbac_config_pb2.Policy(permissions=[rbac_config_pb2.Permission(any=True)])
    for prefix in principals:
        policy.principals.append(
            rbac_config_pb2.Principal(
                authenticated=rbac_config_pb2.Principal.Authenticated(
                    principal_name=string_pb2.StringMatcher(prefix=prefix)
                )
            )
        )
    rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW)
    rules.policies[POLICY_NAME].CopyFrom(policy)
    return rules


@lru_cache(maxsize=1)
def rbac_http_filter() -> http_connection_manager_pb2.HttpFilter:
    """The inbound HCM's RBAC filter (before the router); its policy comes per virtual host (``rbac_per_route``).

    Its own config is the fallback for a request whose route carries no
    policy: an ALLOW list of no policies, which denies everyone (fail closed).
    Cached: callers only copy it.
    """
    deny_all = rbac_http_pb2.RBAC(rules=rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW))
    return http_connection_manager_pb2.HttpFilter(name=RBAC_HTTP_FILTER, typed_config=_pack(deny_all))


def rbac_per_route(principals: tuple[str, ...]) -> tuple[str, any_pb2.Any]:
    """(filter name, packed ``RBACPerRoute``) for the inbound virtual host: 403 for any other principal.

    In the route configuration (RDS), not in the listener: Envoy applies a
    route update to the next request on an open connection, while a listener
    update reaches new connections only (an open one keeps the old policy
    until it drains), so a caller admitted by a new declaration could be
    refused on a connection opened just before.
    """
    per_route = rbac_http_pb2.RBACPerRoute(rbac=rbac_http_pb2.RBAC(rules=_rbac_rules(principals)))
    return RBAC_HTTP_FILTER, _pack(per_route)


def rbac_network_filter(principals: tuple[str, ...]) -> listener_components_pb2.Filter:
    """The inbound TCP listener's RBAC filter (before tcp_proxy): any other principal's connection is closed.

    In the listener: a TCP connection is authorized once, when it opens (there
    are no requests to authorize one by one), so a policy change reaches new
    connections only; an open connection keeps the policy it was admitted by
    until Envoy drains it.
    """
    return listener_components_pb2.Filter(
        name=RBAC_NETWORK_FILTER,
        typed_config=_pack(rbac_network_pb2.RBAC(stat_prefix="inbound_tcp.", rules=_rbac_rules(principals))),
    )


__all__ = [
    "SDS_DIR",
    "TRUST_FILE",
    "TRUST_SECRET",
    "WORKLOAD_FILE",
    "WORKLOAD_SECRET",
    "allowed_principals",
    "downstream_transport_socket",
    "rbac_http_filter",
    "rbac_network_filter",
    "rbac_per_route",
    "sidecar_prefix",
    "upstream_transport_socket",
]
