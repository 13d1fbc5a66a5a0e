"""The one place meshlog's own launchers (demo, test support, benches) build the xDS trust flags.

``xds-gateway run`` and ``meshlog-sidecar run`` speak mTLS unless told
``--insecure``. A launcher passes each process its identity's files
(``identity.pki.IdentityFiles``: cert, key, trust bundle), or ``None`` for
plaintext on loopback. Switching the demo or the tests to mTLS is giving
these functions identities instead of ``None``; nothing else changes.
"""

from __future__ import annotations

from identity.pki import IdentityFiles

__all__ = ["gateway_tls_args", "sidecar_tls_args"]


def _args(identity: IdentityFiles | None) -> list[str]:
    if identity is None:
        return ["--insecure"]
    return ["--tls-cert", str(identity.cert), "--tls-key", str(identity.key), "--tls-ca", str(identity.bundle)]


def gateway_tls_args(identity: IdentityFiles | None) -> list[str]:
    """Flags for ``xds-gateway run``: its certificate (a ``gateway/<replica>`` id with the host names
    sidecars dial as DNS/IP SANs) or ``--insecure``."""
    return _args(identity)


def sidecar_tls_args(identity: IdentityFiles | None) -> list[str]:
    """Flags for ``meshlog-sidecar run``: its workload certificate (``sidecar/<service>/<instance>``)
    or ``--insecure``."""
    return _args(identity)
