"""Every long-running process renews its own certificate at ``meshlog ca serve`` (``--ca-url``).

One loop for every role: the sidecar agent (``proxy.renewal`` adds handing
the pair to Envoy), the projector, the xDS gateways and the health checkers
(``--ca-url`` or ``$MESHLOG_CA_URL``, ``identity.renewal_cli``). When to try is decided by one pure
function, ``next_attempt(now, not_before, not_after, failures)``;
``CertificateRenewer`` is the thin I/O shell around it: it sleeps until that
time, renews with ``identity.client.renew`` (mTLS with the current
certificate, a CSR for a new key; the CA renews any role presenting its
current, logged, unrevoked certificate, for the same SPIFFE id, and logs the
renewal as an ``identity.issued`` event), and writes the new pair over the
process's own files. The users of those files read them again by themselves:
the Kafka clients' TLS context before the next handshake after a change
(``events.kafka_security.ReloadingClientContext``), the gateway's server
credentials at its next handshake, Envoy over file SDS.

Invariants:
- Schedule: the first attempt for a certificate is at ``pki.renewal_time``
  (2/3 of its life), never sooner than ``MIN_GAP_S`` from now (a CA whose
  lifetime is shorter than its clock-skew backdating hands out certificates
  that are due at once; they are renewed at most once per ``MIN_GAP_S``, not
  in a busy loop). After ``n`` failed attempts the next is ``RETRY_FIRST_S``
  doubling to ``RETRY_MAX_S`` later, and while the certificate is valid at
  most a quarter of its remaining life later (never below ``RETRY_FIRST_S``),
  so several attempts fit before it expires. An expired certificate is
  still retried every ``RETRY_MAX_S`` (the CA names why it refuses).
- The files only ever hold a matching pair for longer than an instant: the
  new key is written, then the certificate (each by atomic rename), with no
  ``await`` in between; readers that catch the instant between refuse the
  mismatched pair and keep the previous one. If the certificate cannot be
  written, the previous key is put back.
- A certificate replaced by someone else (``meshlog ca renew``) is noticed
  (``current``): the schedule restarts from it.
- Logged, bounded: a failing renewal is logged once, then at a backoff with
  its count (``meshlog.outage.Outage``), and once when it succeeds again; a
  certificate that expires is an ERROR line once per certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable

import aiohttp
from cryptography import x509

from events.files import write_file_atomic
from events.printable import printable
from identity import client, pki
from meshlog.outage import Outage

MIN_GAP_S = 1.0
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
POLL_S = 5.0  # how often the shell looks at the current certificate while it waits (a replaced file)

__all__ = ["next_attempt", "retry_delay", "CertificateRenewer"]


def retry_delay(failures: int) -> float:
    """Seconds before the next attempt after ``failures`` failed ones: 1, 2, 4, ... 60."""
    if failures <= 0:
        return 0.0
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 30))


def next_attempt(now: datetime, not_before: datetime, not_after: datetime, failures: int) -> datetime:
    """When to try to renew the certificate valid from ``not_before`` to ``not_after`` next (see the invariants)."""
    if failures <= 0:
        return max(pki.renewal_time(not_before, not_after), now + timedelta(seconds=MIN_GAP_S))
    delay = retry_delay(failures)
    remaining = (not_after - now).total_seconds()
    if remaining > 0:
        delay = min(delay, max(RETRY_FIRST_S, remaining / 4))
    return now + timedelta(seconds=delay)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# what one attempt can fail with: the CA's refusal, a certificate we refuse, the network, the files
RENEWAL_ERRORS = (client.CaRefused, pki.PkiError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)

Renew = Callable[..., Awaitable[client.Granted]]


class CertificateRenewer:
    """Renews the certificate in ``files`` at ``url`` on ``next_attempt``'s schedule, writing it over them.

    ``current()`` is the certificate (PEM) in use now: by default what the
    certificate file holds; the sidecar's is what Envoy holds. ``hand_over()``
    runs right after a new pair is written (the sidecar gives it to Envoy and
    raises ``OSError`` if it could not); by default nothing, since the files'
    readers reload them by themselves.
    """

    def __init__(self, url: str, files: pki.IdentityFiles, *, renew: Renew = client.renew,
                 clock: Callable[[], datetime] = _utcnow, on_change: Callable[[], None] | None = None,
                 logger: logging.Logger | None = None, what: str = "certificate") -> None:
        self.url = url
        self.files = files
        self._on_change = on_change or (lambda: None)  # e.g. the sidecar rewrites its status file
        self._renew = renew
        self._clock = clock
        self.log = logger or logging.getLogger("identity.renewal")
        self.what = what
        self.failures = 0
        self.renewals = 0
        self.last_error: str | None = None
        self._serial: int | None = None
        self._cert: x509.Certificate | None = None
        self.next_at: datetime | None = None
        self._expired_logged: int | None = None
        self._outage = self._new_outage()

    # ---- what a role may change

    def current(self) -> bytes:
        return self.files.cert.read_bytes()

    def hand_over(self, granted: client.Granted) -> None:
        """Called after the new pair is written; raise ``OSError`` if its users cannot have it."""

    # ---- the shell

    def _new_outage(self) -> Outage:
        return Outage(f"renewing the {self.what} at {self.url}", first_reminder=30.0, max_reminder=600.0)

    def _follow_current(self, now: datetime) -> x509.Certificate:
        """The certificate in use now; a new one (ours or replaced by someone else) restarts the schedule."""
        cert = x509.load_pem_x509_certificate(self.current())
        if self._cert is None or cert.serial_number != self._serial:
            self._cert, self._serial = cert, cert.serial_number
            self.failures = 0
            self.next_at = next_attempt(now, cert.not_valid_before_utc, cert.not_valid_after_utc, 0)
        return self._cert

    def status(self) -> dict:
        cert = self._cert
        return {
            "serial": None if cert is None else pki.serial_hex(cert),
            "not_after": None if cert is None else cert.not_valid_after_utc.isoformat(),
            "next_renewal": None if self.next_at is None else self.next_at.isoformat(),
            "renewals": self.renewals, "failures": self.failures, "last_error": self.last_error,
            "ca_url": self.url,
        }

    def install(self, granted: client.Granted) -> None:
        """Write the new key, then the certificate, over the files; put the old key back on failure."""
        old_key = self.files.key.read_bytes()
        write_file_atomic(self.files.key, pki.key_to_pem(granted.key), 0o600)
        try:
            write_file_atomic(self.files.cert, pki.cert_to_pem(granted.cert))
        except OSError:
            try:
                write_file_atomic(self.files.key, old_key, 0o600)
            except OSError as exc:
                self.log.error("could not put the previous key back into %s (%s): the files hold a new key and "
                               "the previous certificate until the next renewal", self.files.key, exc)
            raise

    async def attempt(self) -> bool:
        """One renewal; True if the new certificate is written and handed over."""
        now = self._clock()
        cert = self._follow_current(now)
        try:
            granted = await self._renew(self.url, self.files)
            self.install(granted)
            self.hand_over(granted)
        except RENEWAL_ERRORS as exc:
            self.failures += 1
            self.last_error = printable(f"{type(exc).__name__}: {exc}", 300)
            self.next_at = next_attempt(now, cert.not_valid_before_utc, cert.not_valid_after_utc, self.failures)
            line = self._outage.failure(time.monotonic(), f"{self.last_error}; next attempt at "
                                        f"{self.next_at.isoformat(timespec='seconds')}")
            if line:
                self.log.warning("%s", line)
            self._on_change()
            return False
        failures = self.failures
        self.renewals += 1
        self.last_error = None
        if self._outage.ongoing:
            self.log.info("renewing the %s at %s works again after %d failed attempts", self.what, self.url,
                          failures)
            self._outage = self._new_outage()
        new = self._follow_current(self._clock())
        self.log.info("renewed the %s at %s: serial %s until %s (was %s); next renewal at %s", self.what, self.url,
                      pki.serial_hex(new), new.not_valid_after_utc.isoformat(timespec="seconds"),
                      pki.serial_hex(cert), self.next_at.isoformat(timespec="seconds") if self.next_at else "-")
        self._on_change()
        return True

    async def run(self) -> None:
        unreadable: str | None = None
        while True:
            now = self._clock()
            try:
                cert = self._follow_current(now)
            except (OSError, ValueError) as exc:  # a file someone broke: said once, looked at again later
                problem = printable(f"{type(exc).__name__}: {exc}", 300)
                if problem != unreadable:
                    self.log.error("cannot read the %s in %s (%s); looking again every %g s", self.what,
                                   self.files.cert, problem, POLL_S)
                    unreadable = problem
                await asyncio.sleep(POLL_S)
                continue
            unreadable = None
            if now >= cert.not_valid_after_utc and self._expired_logged != self._serial:
                self._expired_logged = self._serial
                self.log.error("the %s (serial %s) expired at %s and was not renewed (last error: %s): its peers "
                               "refuse it; still trying at %s", self.what, pki.serial_hex(cert),
                               cert.not_valid_after_utc.isoformat(timespec="seconds"), self.last_error or "none",
                               self.url)
            assert self.next_at is not None
            wait = (self.next_at - now).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, POLL_S))
                continue
            try:
                await self.attempt()
            except Exception:  # noqa: BLE001 - a bug must not end renewal for good: logged, retried later
                self.log.exception("renewing the %s failed unexpectedly", self.what)
                self.failures += 1
                self.next_at = next_attempt(self._clock(), cert.not_valid_before_utc, cert.not_valid_after_utc,
                                            self.failures)
