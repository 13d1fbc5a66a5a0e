"""How every meshlog process connects to Kafka: address plus security, built in one place.

Every aiokafka producer, consumer and admin client in meshlog is constructed
with ``**connection_kwargs(bootstrap)`` (or ``security.connection_kwargs``):
the bootstrap address together with the security settings of this process.
A client built without it would silently talk PLAINTEXT to a TLS broker, so
there is no second way.

Invariants:
- One process has one Kafka identity: the settings come from the command
  line flags of :func:`add_arguments` (installed by :func:`configure_from_args`)
  or else from the ``MESHLOG_KAFKA_*`` environment variables; a child process
  inherits them through the environment.
- Settings are validated when they are read, not when the first client
  connects: a bad combination is a :class:`KafkaSecurityError` naming the flag
  or variable and the problem (CLIs turn it into exit 2).
- TLS material is loaded fresh for every client, and a client's context
  re-reads its certificate and key before the handshake of each new
  connection when the files changed since it last loaded them
  (:class:`ReloadingClientContext`): a workload certificate renewed on disk
  (24 h certificates, renewed at 2/3 of their life) is presented at the next
  reconnect of a client started days ago, with no restart. A pair that does
  not load (a renewal caught between its key and its certificate) is not
  installed: the context keeps the chain it had and tries again at the next
  handshake. A missing or unreadable file at build time names its setting.
- PLAINTEXT stays the default so a local development broker works as before,
  but PLAINTEXT to a broker that is not on loopback logs a warning (once per
  address): anyone on that network can read and write the log.
- The SASL password is never part of ``repr`` or an error message.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import ssl
import sys
import threading
from dataclasses import dataclass, field
from typing import Mapping

from events.printable import quoted
from events.files import stamp as files_stamp

log = logging.getLogger(__name__)

PLAINTEXT = "PLAINTEXT"
SSL = "SSL"
SASL_SSL = "SASL_SSL"
PROTOCOLS = (PLAINTEXT, SSL, SASL_SSL)  # SASL_PLAINTEXT is left out on purpose: it sends credentials in clear
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")

ENV_PROTOCOL = "MESHLOG_KAFKA_SECURITY_PROTOCOL"
ENV_CA_FILE = "MESHLOG_KAFKA_CA_FILE"
ENV_CERT_FILE = "MESHLOG_KAFKA_CERT_FILE"
ENV_KEY_FILE = "MESHLOG_KAFKA_KEY_FILE"
ENV_SASL_MECHANISM = "MESHLOG_KAFKA_SASL_MECHANISM"
ENV_SASL_USERNAME = "MESHLOG_KAFKA_SASL_USERNAME"
ENV_SASL_PASSWORD = "MESHLOG_KAFKA_SASL_PASSWORD"
ENV_SASL_PASSWORD_FILE = "MESHLOG_KAFKA_SASL_PASSWORD_FILE"

# dataclass field -> (command line flag, environment variable): the names errors use
_SOURCES: Mapping[str, tuple[str, str]] = {
    "protocol": ("--kafka-security-protocol", ENV_PROTOCOL),
    "ca_file": ("--kafka-ca-file", ENV_CA_FILE),
    "cert_file": ("--kafka-cert-file", ENV_CERT_FILE),
    "key_file": ("--kafka-key-file", ENV_KEY_FILE),
    "sasl_mechanism": ("--kafka-sasl-mechanism", ENV_SASL_MECHANISM),
    "sasl_username": ("--kafka-sasl-username", ENV_SASL_USERNAME),
    "sasl_password": ("--kafka-sasl-password-file", ENV_SASL_PASSWORD),
}


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work; the message names the setting."""


def _name(field_name: str) -> str:
    flag, env = _SOURCES[field_name]
    return f"{flag} / ${env}"


@dataclass(frozen=True)
class KafkaSecurity:
    """The security half of a Kafka connection. ``KafkaSecurity()`` is PLAINTEXT."""

    protocol: str = PLAINTEXT
    ca_file: str | None = None  # PEM bundle the broker's certificate must chain to (None: system roots)
    cert_file: str | None = None  # PEM client certificate (chain) for mTLS
    key_file: str | None = None  # its private key (PEM, unencrypted)
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"{_name('protocol')}: {quoted(self.protocol, 200)} is not one of {', '.join(PROTOCOLS)}"
            )
        tls_files = [f for f in ("ca_file", "cert_file", "key_file") if getattr(self, f)]
        sasl = [f for f in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, f)]
        if self.protocol == PLAINTEXT and (tls_files or sasl):
            given = tls_files + sasl
            raise KafkaSecurityError(
                f"{_name('protocol')} is PLAINTEXT but {_name(given[0])} is set: "
                "say SSL or SASL_SSL, or drop the TLS/SASL settings"
            )
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            raise KafkaSecurityError(f"{_name(missing)} is missing: a client certificate needs its key and vice versa")
        if self.protocol == SSL and sasl:
            raise KafkaSecurityError(f"{_name(sasl[0])} is set but {_name('protocol')} is SSL (use SASL_SSL for SASL)")
        if self.protocol == SASL_SSL:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaSecurityError(
                    f"{_name('sasl_mechanism')}: {quoted(self.sasl_mechanism, 200)} is not one of {', '.join(SASL_MECHANISMS)}"
                )
            for required in ("sasl_username", "sasl_password"):
                if not getattr(self, required):
                    raise KafkaSecurityError(f"{_name(required)} is required with SASL_SSL")

    @property
    def secure(self) -> bool:
        return self.protocol != PLAINTEXT

    # -- construction ------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KafkaSecurity":
        """Settings from the ``MESHLOG_KAFKA_*`` variables (unset or empty: not given)."""
        return cls._build(_env_values(os.environ if environ is None else environ))

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> "KafkaSecurity":
        """The environment's settings with each flag given on the command line taking precedence."""
        given = _env_values(os.environ if environ is None else environ)
        for name in ("protocol", "ca_file", "cert_file", "key_file", "sasl_mechanism", "sasl_username"):
            value = getattr(args, _SOURCES[name][0].lstrip("-").replace("-", "_"), None)
            if value:
                given[name] = value
        password_file = getattr(args, "kafka_sasl_password_file", None)
        if password_file:
            given["sasl_password"] = _read_password_file(password_file)
        return cls._build(given)

    @classmethod
    def _build(cls, given: Mapping[str, str | None]) -> "KafkaSecurity":
        values = {k: (v.strip() if isinstance(v, str) and k != "sasl_password" else v) or None for k, v in given.items()}
        protocol = values.pop("protocol")
        if protocol is None:  # not said: TLS files mean SSL, SASL settings mean SASL_SSL
            if values.get("sasl_mechanism") or values.get("sasl_username"):
                protocol = SASL_SSL
            elif values.get("ca_file") or values.get("cert_file") or values.get("key_file"):
                protocol = SSL
            else:
                protocol = PLAINTEXT
        return cls(protocol=protocol.upper(), **values)

    # -- what clients get --------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: verify the broker against ``ca_file``; present the client certificate if set
        (re-read before a handshake when its files changed: :class:`ReloadingClientContext`)."""
        # what ssl.create_default_context(SERVER_AUTH) sets up, on the reloading subclass
        ctx = ReloadingClientContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file:
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaSecurityError(f"{_name('ca_file')}: cannot load {quoted(self.ca_file, 200)}: {exc}") from None
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.cert_file:
            try:
                ctx.load_chain_from(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaSecurityError(
                    f"{_name('cert_file')} / {_name('key_file')}: cannot load "
                    f"{quoted(self.cert_file, 200)} with {quoted(self.key_file, 200)}: {exc}"
                ) from None
        return ctx

    def client_kwargs(self) -> dict:
        """The aiokafka keyword arguments (``security_protocol``, ``ssl_context``, ``sasl_*``)."""
        kwargs: dict = {"security_protocol": self.protocol}
        if self.protocol in (SSL, SASL_SSL):
            kwargs["ssl_context"] = self.ssl_context()
        if self.protocol == SASL_SSL:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def connection_kwargs(self, bootstrap: str) -> dict:
        """``bootstrap_servers`` plus :meth:`client_kwargs`; warns once about PLAINTEXT off loopback."""
        if not self.secure:
            _warn_plaintext(bootstrap)
        return {"bootstrap_servers": bootstrap, **self.client_kwargs()}


class ReloadingClientContext(ssl.SSLContext):
    """A client ``SSLContext`` that loads its certificate chain again, before a handshake, when the files changed.

    aiokafka passes one ``ssl_context`` to ``loop.create_connection`` for every
    connection a client ever opens (bootstrap, each broker, every reconnect),
    and asyncio starts each TLS session with ``context.wrap_bio``: checking
    the files there covers every handshake, at the cost of two ``stat`` calls
    per new connection. OpenSSL copies the context's certificate and key into
    each session when it is created, so established connections keep theirs
    and new ones get the renewed pair.

    A changed pair is first loaded into a scratch context: only a key that
    matches its certificate replaces the chain (loading a mismatched pair into
    this context would leave it without a usable key). The trust bundle is
    not reloaded (a root changes rarely and needs a restart).
    """

    _files: tuple[str, str] | None = None
    _loaded: tuple = ()
    _refused: tuple | None = None

    def load_chain_from(self, certfile: str, keyfile: str | None) -> None:
        """Load the chain now (errors raise) and reload it from the same files whenever they change."""
        keyfile = keyfile or certfile
        stamp = files_stamp(certfile, keyfile)
        self.load_cert_chain(certfile=certfile, keyfile=keyfile)
        self._files, self._loaded = (certfile, keyfile), stamp

    def reload_if_changed(self) -> bool:
        """Load the chain again if its files changed since the last load; True if a new chain is in use."""
        if self._files is None:
            return False
        stamp = files_stamp(*self._files)
        if stamp == self._loaded or stamp == self._refused:
            return False
        certfile, keyfile = self._files
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile=certfile, keyfile=keyfile)
            self.load_cert_chain(certfile=certfile, keyfile=keyfile)
        except (OSError, ssl.SSLError) as exc:
            self._refused = stamp  # logged once per state of the files; retried when they change again
            log.warning("Kafka client certificate %s (key %s) changed but does not load (%s): keeping the one "
                        "loaded before", quoted(certfile, 200), quoted(keyfile, 200), quoted(str(exc), 200))
            return False
        self._loaded, self._refused = stamp, None
        log.info("Kafka client certificate %s changed: new connections present the new one", quoted(certfile, 200))
        return True

    def wrap_bio(self, *args, **kwargs):  # asyncio's TLS transport (aiokafka) starts every session here
        self.reload_if_changed()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args, **kwargs):  # blocking clients
        self.reload_if_changed()
        return super().wrap_socket(*args, **kwargs)


def _env_values(env: Mapping[str, str]) -> dict[str, str | None]:
    return {
        "protocol": env.get(ENV_PROTOCOL),
        "ca_file": env.get(ENV_CA_FILE),
        "cert_file": env.get(ENV_CERT_FILE),
        "key_file": env.get(ENV_KEY_FILE),
        "sasl_mechanism": env.get(ENV_SASL_MECHANISM),
        "sasl_username": env.get(ENV_SASL_USERNAME),
        "sasl_password": env.get(ENV_SASL_PASSWORD) or _read_password_file(env.get(ENV_SASL_PASSWORD_FILE)),
    }


def _read_password_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise KafkaSecurityError(
            f"--kafka-sasl-password-file / ${ENV_SASL_PASSWORD_FILE}: cannot read {quoted(path, 200)}: {exc.strerror}"
        ) from None


# -- the PLAINTEXT warning -------------------------------------------------------

def is_loopback(bootstrap: str) -> bool:
    """True when every ``host:port`` of a bootstrap list is a loopback address or ``localhost``."""
    hosts = []
    for entry in bootstrap.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host = entry.rpartition(":")[0] if ":" in entry else entry
        hosts.append(host.strip("[]"))
    if not hosts:
        return False
    for host in hosts:
        if host.lower() == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:  # a DNS name other than localhost may be anywhere
            return False
    return True


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_plaintext(bootstrap: str) -> None:
    if is_loopback(bootstrap):
        return
    with _warned_lock:
        if bootstrap in _warned:
            return
        _warned.add(bootstrap)
    log.warning(
        "Kafka at %s is reached over PLAINTEXT: anyone on that network can read and write the mesh's log "
        "(set %s=SSL with %s, %s and %s)", quoted(bootstrap, 200)[1:-1], ENV_PROTOCOL, ENV_CA_FILE, ENV_CERT_FILE, ENV_KEY_FILE,
    )


# -- the process's settings -----------------------------------------------------

_configured: KafkaSecurity | None = None


def configure(security: KafkaSecurity | None) -> None:
    """Install this process's settings (``None``: back to reading the environment)."""
    global _configured
    _configured = security


def current() -> KafkaSecurity:
    """The settings installed by :func:`configure`, else those of the environment."""
    return _configured if _configured is not None else KafkaSecurity.from_env()


def connection_kwargs(bootstrap: str, security: KafkaSecurity | None = None) -> dict:
    """What every aiokafka client is built with: ``AIOKafkaConsumer(**connection_kwargs(bootstrap), ...)``."""
    return (security or current()).connection_kwargs(bootstrap)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Kafka security flags; each overrides its ``MESHLOG_KAFKA_*`` variable."""
    group = parser.add_argument_group(
        "Kafka security", f"default: ${ENV_PROTOCOL} and the other MESHLOG_KAFKA_* variables, else PLAINTEXT"
    )
    group.add_argument("--kafka-security-protocol", metavar="PROTO", type=str.upper,
                       help=f"one of {', '.join(PROTOCOLS)} (default: SSL when TLS files are given)")
    group.add_argument("--kafka-ca-file", metavar="PEM", help=f"CA bundle the broker must chain to (${ENV_CA_FILE})")
    group.add_argument("--kafka-cert-file", metavar="PEM", help=f"client certificate for mTLS (${ENV_CERT_FILE})")
    group.add_argument("--kafka-key-file", metavar="PEM", help=f"the client certificate's key (${ENV_KEY_FILE})")
    group.add_argument("--kafka-sasl-mechanism", metavar="MECH", type=str.upper,
                       help=f"{' or '.join(SASL_MECHANISMS)} with SASL_SSL (${ENV_SASL_MECHANISM})")
    group.add_argument("--kafka-sasl-username", metavar="USER", help=f"SASL user (${ENV_SASL_USERNAME})")
    group.add_argument("--kafka-sasl-password-file", metavar="FILE",
                       help=f"file holding the SASL password (${ENV_SASL_PASSWORD_FILE}; or ${ENV_SASL_PASSWORD})")


def configure_from_args(args: argparse.Namespace) -> KafkaSecurity:
    """Read flags over the environment, check that the TLS files load, install the result and return it."""
    security = KafkaSecurity.from_args(args)
    security.client_kwargs()  # a missing or mismatched file is a usage error now, not a traceback at first connect
    configure(security)
    return security


def to_env(security: KafkaSecurity) -> dict[str, str]:
    """The environment variables that make a child process use ``security`` (password inline)."""
    env = {ENV_PROTOCOL: security.protocol}
    for name, var in (("ca_file", ENV_CA_FILE), ("cert_file", ENV_CERT_FILE), ("key_file", ENV_KEY_FILE),
                      ("sasl_mechanism", ENV_SASL_MECHANISM), ("sasl_username", ENV_SASL_USERNAME),
                      ("sasl_password", ENV_SASL_PASSWORD)):
        value = getattr(security, name)
        if value:
            env[var] = value
    return env


def configure_from_args_or_exit(args: argparse.Namespace, prog: str) -> KafkaSecurity:
    """:func:`configure_from_args` for a CLI's ``main``: bad settings print the reason and exit 2."""
    try:
        return configure_from_args(args)
    except KafkaSecurityError as exc:
        print(f"{prog}: invalid input: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
