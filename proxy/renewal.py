"""The sidecar renews its own workload certificate at ``meshlog ca serve`` (``--ca-url``).

The schedule and the loop are every role's (``identity.renewal``); what the
sidecar adds is Envoy: the certificate in use is the one Envoy holds
(``SecretSync.current``), and a new pair is handed to Envoy at once through
``SecretSync.check`` (file SDS, no restart) rather than at its next poll.

Invariants (besides ``identity.renewal``'s):
- Envoy only ever sees a matching key and certificate: ``SecretSync`` runs on
  the same event loop and the pair is written with no ``await`` in between;
  a renewal whose certificate did not reach Envoy counts as failed.
- A certificate replaced by someone else (``meshlog ca renew``) is noticed
  through ``SecretSync.current``: the schedule restarts from it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable

from identity import client, pki
from identity.renewal import (  # noqa: F401 - the schedule, re-exported for the sidecar's callers
    MIN_GAP_S, POLL_S, RENEWAL_ERRORS, RETRY_FIRST_S, RETRY_MAX_S, Renew, next_attempt, retry_delay,
)
from identity import renewal as _renewal
from proxy.sds import SecretSync, SidecarTls

log = logging.getLogger("meshlog.sidecar.renewal")

__all__ = ["next_attempt", "retry_delay", "CertificateRenewer"]


class CertificateRenewer(_renewal.CertificateRenewer):
    """Renews the sidecar's certificate at ``url`` on ``next_attempt``'s schedule and hands it to Envoy."""

    def __init__(self, url: str, files: SidecarTls, secrets: SecretSync, *, renew: Renew = client.renew,
                 clock: Callable[[], datetime] = _renewal._utcnow, on_change: Callable[[], None] | None = None) -> None:
        super().__init__(url, pki.IdentityFiles(cert=files.cert, key=files.key, bundle=files.ca), renew=renew,
                         clock=clock, on_change=on_change, logger=log, what="workload certificate")
        self.secrets = secrets

    def current(self) -> bytes:
        return self.secrets.current.cert_pem

    def hand_over(self, granted: client.Granted) -> None:
        self.secrets.check()  # hand the new pair to Envoy now, not at the next poll
        if self.secrets.current.serial != granted.cert.serial_number:
            raise OSError(f"the renewed certificate (serial {pki.serial_hex(granted.cert)}) was written but "
                          "not handed to Envoy (see the SDS lines above)")
