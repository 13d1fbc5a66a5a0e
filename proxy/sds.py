"""The sidecar's workload certificate, handed to Envoy by file-watched SDS.

Envoy dials every gateway over mTLS (``upstream_tls_context``): it presents
the sidecar's workload certificate and accepts only a gateway certificate of
the mesh root whose SPIFFE id is ``spiffe://<domain>/gateway/...``. Both the
certificate (with its key) and the trust bundle reach Envoy as SDS secrets
read from files in ``<workdir>/sds`` (``path_config_source`` with a
``watched_directory``): Envoy reloads a secret when its file is replaced by a
rename in that directory, so a renewed certificate is used for new
connections without restarting Envoy. The same two files are the sidecar's
mesh identity on the data plane: the projector renders inbound listeners and
clusters that name them relative to Envoy's working directory
(``projector.mesh_tls``), which is the agent's work dir.

Invariants:
- The secret files are derived from the operator's files (``--tls-cert``,
  ``--tls-key``, ``--tls-ca``; renewed in place by ``meshlog ca renew``, any
  tool, or the agent itself with ``--ca-url``: ``proxy.renewal``): the PEM is inlined, so Envoy never sees a certificate without
  its matching key. A pair that does not match (caught between the key's
  and the certificate's replacement) is not written; the previous secret
  stays until both match.
- Each secret file is written whole and renamed into place (never edited),
  the key-holding one with mode 0600.
- ``secret_documents`` and ``upstream_tls_context`` are pure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from events.files import write_file_atomic
from meshlog.xds_trust import TlsFiles, TlsFilesError, TlsMaterial, files_stamp, load_tls_files
# the same two secrets serve the data plane: the rendered inbound listeners and clusters
# (projector.mesh_tls) name these files relative to Envoy's working directory, the agent's work dir
from projector.mesh_tls import SDS_DIR, TRUST_FILE, TRUST_SECRET, WORKLOAD_FILE, WORKLOAD_SECRET

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

__all__ = ["SDS_DIR", "SidecarTls", "TlsProblem", "load_tls", "secret_documents", "upstream_tls_context", "write_secrets",
           "SecretSync"]


# the sidecar reads its files exactly as the gateway reads its own (meshlog.xds_trust)
SidecarTls = TlsFiles
TlsProblem = TlsFilesError
Material = TlsMaterial
load_tls = load_tls_files


def secret_documents(m: Material) -> dict[str, dict]:
    """The two SDS files' contents: file name -> ``{"resources": [Secret]}``."""
    workload = {"@type": SECRET_TYPE, "name": WORKLOAD_SECRET, "tls_certificate": {
        "certificate_chain": {"inline_string": m.cert_pem.decode()},
        "private_key": {"inline_string": m.key_pem.decode()},
    }}
    trust = {"@type": SECRET_TYPE, "name": TRUST_SECRET, "validation_context": {
        "trusted_ca": {"inline_string": m.ca_pem.decode()},
    }}
    return {WORKLOAD_FILE: {"resources": [workload]}, TRUST_FILE: {"resources": [trust]}}


def _sds_source(sds_dir: Path, file_name: str) -> dict:
    return {"path_config_source": {"path": str(sds_dir / file_name), "watched_directory": {"path": str(sds_dir)}},
            "resource_api_version": "V3"}


def upstream_tls_context(sds_dir: Path, trust_domain: str) -> dict:
    """The xDS cluster's transport socket: mTLS with the SDS secrets, gateways' SPIFFE ids only."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [
                    {"name": WORKLOAD_SECRET, "sds_config": _sds_source(sds_dir, WORKLOAD_FILE)}],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": f"spiffe://{trust_domain}/gateway/"}}]},
                    "validation_context_sds_secret_config": {
                        "name": TRUST_SECRET, "sds_config": _sds_source(sds_dir, TRUST_FILE)},
                },
            },
        },
    }


def write_secrets(sds_dir: Path, m: Material) -> None:
    """Write both SDS files by atomic rename in ``sds_dir`` (the trust bundle first, the key's file 0600)."""
    sds_dir.mkdir(parents=True, exist_ok=True)
    docs = secret_documents(m)
    write_file_atomic(sds_dir / TRUST_FILE, json.dumps(docs[TRUST_FILE]).encode(), 0o644)
    write_file_atomic(sds_dir / WORKLOAD_FILE, json.dumps(docs[WORKLOAD_FILE]).encode(), 0o600)


class SecretSync:
    """Keeps the SDS files in step with the operator's certificate files (polled: a few ``stat`` calls)."""

    def __init__(self, files: SidecarTls, sds_dir: Path, first: Material) -> None:
        self.files = files
        self.sds_dir = sds_dir
        self.current = first
        self._stamp = files_stamp(files)
        self._bad_stamp: tuple | None = None
        self.renewals = 0

    def start(self) -> None:
        write_secrets(self.sds_dir, self.current)

    def check(self) -> bool:
        """Rewrite the secrets if the files changed to a usable pair; True if they were rewritten."""
        stamp = files_stamp(self.files)
        if stamp == self._stamp or stamp == self._bad_stamp:
            return False
        try:
            material = load_tls(self.files)
        except TlsProblem as exc:
            self._bad_stamp = stamp
            log.warning("TLS files changed but are not usable (%s); Envoy keeps the previous certificate", exc)
            return False
        if material.identity != self.current.identity:
            self._bad_stamp = stamp
            log.error("TLS files now hold %s, not %s: not handed to Envoy", material.identity.uri,
                      self.current.identity.uri)
            return False
        self._stamp = stamp
        if material.cert_pem == self.current.cert_pem and material.ca_pem == self.current.ca_pem:
            return False
        write_secrets(self.sds_dir, material)
        self.current = material
        self.renewals += 1
        log.info("workload certificate renewed (serial %x): handed to Envoy over SDS", material.serial)
        return True

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                self.check()
            except OSError as exc:
                log.error("cannot write the SDS files in %s: %s", self.sds_dir, exc)
