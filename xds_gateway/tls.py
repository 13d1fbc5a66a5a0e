"""The gateway's TLS material: server credentials that require client certificates.

Invariants:
- Client certificates are required and must chain to the mesh root given as
  the CA bundle (gRPC/BoringSSL checks the chain and the validity dates); who
  the client is, and what it may have, is decided per stream afterwards
  (``xds_gateway.guard``).
- The gateway's own certificate is re-read when its files change (checked at
  each new TLS handshake, a few ``stat`` calls), so a renewed certificate is
  served without a restart. A half-replaced pair (a key that is not the
  certificate's) is not used: the previous pair stays until both match.
- Errors name the file and the problem (``TlsConfigError``); the CLI turns
  them into exit 2.
"""

from __future__ import annotations

import logging

import grpc

from meshlog.xds_trust import TlsFiles, TlsFilesError, TlsMaterial, files_stamp, load_tls_files

log = logging.getLogger(__name__)

__all__ = ["TlsFiles", "TlsConfigError", "load_material", "server_credentials"]

# the gateway reads its files exactly as a sidecar reads its own (meshlog.xds_trust)
TlsConfigError = TlsFilesError
Material = TlsMaterial
load_material = load_tls_files


def server_credentials(files: TlsFiles, first: Material) -> grpc.ServerCredentials:
    """mTLS server credentials over ``files``, re-read when they change."""

    def config(m: Material):
        return grpc.ssl_server_certificate_configuration([(m.key_pem, m.cert_pem)], root_certificates=m.ca_pem)

    seen = [files_stamp(files), None]  # files in use, files last found unusable (logged once)

    def fetch():
        stamp = files_stamp(files)
        if stamp == seen[0] or stamp == seen[1]:
            return None
        try:
            material = load_material(files)
        except TlsConfigError as exc:
            seen[1] = stamp
            log.warning("TLS files changed but are not usable (%s); still serving the previous certificate", exc)
            return None
        seen[0] = stamp
        log.info("TLS certificate reloaded: %s", material.identity.uri)
        return config(material)

    return grpc.dynamic_ssl_server_credentials(config(first), fetch, require_client_authentication=True)
