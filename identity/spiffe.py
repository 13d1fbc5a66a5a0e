"""SPIFFE ids for every meshlog role: one scheme, strict parse and format.

Scheme (``<domain>`` is the trust domain, e.g. ``mesh.local``)::

    spiffe://<domain>/sidecar/<service>/<instance>
    spiffe://<domain>/gateway/<replica>
    spiffe://<domain>/projector
    spiffe://<domain>/checker/<name>
    spiffe://<domain>/operator/<user>
    spiffe://<domain>/replay/<name>
    spiffe://<domain>/broker/<id>
    spiffe://<domain>/ca-server/<replica>
    spiffe://<domain>/ca                      (the root; never a workload certificate)

Invariants:
- ``parse(format(x)) == x`` and ``format(parse(s)) == s`` for every accepted
  ``s``: there is exactly one spelling of each identity (no trailing slash,
  no percent-encoding, no query, no port, lowercase domain), so the string is
  safe to compare, to use as a map key and to store in an event.
- Each role has a fixed number of path segments; segments use the SPIFFE
  character set (letters, digits, ``.``, ``-``, ``_``), never ``.``/``..``.
  A sidecar's service is additionally a meshlog service name (lowercase
  DNS-style), so the identity names exactly one service of the mesh.
- ``common_name`` is a pure function of the id, at most 64 characters (the
  X.509 limit), so Kafka's default certificate principal ``User:CN=<name>``
  is stable across renewals and can be used in ACLs.
- Nothing here does I/O; errors are ``SpiffeIdError`` naming the problem.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

from events.printable import quoted

SCHEME = "spiffe://"
MAX_LENGTH = 2048  # SPIFFE-ID spec: URIs longer than 2048 bytes are not SPIFFE ids
CN_MAX = 64  # X.509 upper bound for commonName

# role -> names of its path segments, in order
ROLES: Mapping[str, tuple[str, ...]] = {
    "sidecar": ("service", "instance"),
    "gateway": ("replica",),
    "projector": (),
    "checker": ("name",),
    "operator": ("user",),
    "replay": ("name",),       # `replay` against a secure broker: reads the log, writes nothing
    "broker": ("id",),         # a Kafka broker's own certificate (issued offline, before the log exists)
    "ca-server": ("replica",),  # a `meshlog ca serve` replica's TLS certificate
    "ca": (),                   # the trust domain's root itself, never a workload
}

_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SERVICE_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")  # events.types' service names


class SpiffeIdError(ValueError):
    """A string or part that is not a valid meshlog SPIFFE id; the message names the problem."""


def validate_domain(domain: str) -> str:
    if not isinstance(domain, str) or not _DOMAIN_RE.match(domain):
        raise SpiffeIdError(
            f"trust domain {quoted(domain)} must be 1-255 lowercase letters, digits, '.', '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return domain


def _validate_segment(role: str, field: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT_RE.match(value) or value in (".", ".."):
        raise SpiffeIdError(
            f"{role} {field} {quoted(value)} must be 1-128 letters, digits, '.', '-' or '_' (and not '.' or '..')"
        )
    if role == "sidecar" and field == "service" and not _SERVICE_RE.match(value):
        raise SpiffeIdError(
            f"sidecar service {quoted(value)} must be a lowercase DNS-style service name "
            "(letters, digits, '-' and '.', 1-63 characters)"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """One validated identity. Build with ``SpiffeId.of`` or the role helpers, or ``parse``."""

    domain: str
    role: str
    segments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_domain(self.domain)
        if self.role not in ROLES:
            raise SpiffeIdError(f"role {quoted(self.role)} is not one of {', '.join(ROLES)}")
        names = ROLES[self.role]
        if not isinstance(self.segments, tuple) or len(self.segments) != len(names):
            want = "/".join(f"<{n}>" for n in names) or "nothing"
            raise SpiffeIdError(
                f"role {self.role!r} takes {len(names)} path segment(s) after the role ({want}), "
                f"got {len(self.segments) if isinstance(self.segments, tuple) else 'a non-tuple'}"
            )
        for name, value in zip(names, self.segments):
            _validate_segment(self.role, name, value)
        if len(self.uri) > MAX_LENGTH:
            raise SpiffeIdError(f"SPIFFE id is longer than {MAX_LENGTH} characters")

    @classmethod
    def of(cls, domain: str, role: str, *segments: str) -> "SpiffeId":
        return cls(domain, role, tuple(segments))

    @property
    def path(self) -> str:
        """``/role/seg...``, the part after the trust domain."""
        return "/" + "/".join((self.role, *self.segments))

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.domain}{self.path}"

    def __str__(self) -> str:
        return self.uri

    def field(self, name: str) -> str:
        """A named segment (``service``, ``instance``, ``replica``, ``name``, ``user``)."""
        names = ROLES[self.role]
        if name not in names:
            raise SpiffeIdError(f"role {self.role!r} has no {name!r} (it has: {', '.join(names) or 'none'})")
        return self.segments[names.index(name)]

    @property
    def common_name(self) -> str:
        """Stable X.509 CN: the path without the leading slash, or a hashed form past 64 characters."""
        name = self.path[1:]
        if len(name) <= CN_MAX:
            return name
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        return f"{name[: CN_MAX - 17]}~{digest}"

    @property
    def kafka_principal(self) -> str:
        """The principal Kafka's default SSL principal builder derives from our certificates' subject."""
        return f"User:CN={self.common_name}"


def sidecar(domain: str, service: str, instance: str) -> SpiffeId:
    return SpiffeId(domain, "sidecar", (service, instance))


def gateway(domain: str, replica: str) -> SpiffeId:
    return SpiffeId(domain, "gateway", (replica,))


def projector(domain: str) -> SpiffeId:
    return SpiffeId(domain, "projector", ())


def checker(domain: str, name: str) -> SpiffeId:
    return SpiffeId(domain, "checker", (name,))


def operator(domain: str, user: str) -> SpiffeId:
    return SpiffeId(domain, "operator", (user,))


def ca(domain: str) -> SpiffeId:
    return SpiffeId(domain, "ca", ())


def sidecar_service(text: str) -> str | None:
    """The service named by a sidecar's SPIFFE id text, None for any other role.

    Lenient where ``parse`` is strict: it reads ids as the log holds them
    (a report must not fail on an old or odd one), so it never raises.
    """
    parts = text.split("/")
    return parts[4] if len(parts) >= 6 and parts[3] == "sidecar" else None


def parse(text: str) -> SpiffeId:
    """Parse the one accepted spelling of a meshlog SPIFFE id, or raise ``SpiffeIdError``."""
    if not isinstance(text, str):
        raise SpiffeIdError(f"SPIFFE id must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise SpiffeIdError(f"SPIFFE id is longer than {MAX_LENGTH} characters")
    if not text.startswith(SCHEME):
        raise SpiffeIdError(f"{quoted(text)} is not a SPIFFE id: it must start with {SCHEME!r}")
    rest = text[len(SCHEME):]
    for bad, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding"), ("@", "user info"), (":", "a port")):
        if bad in rest:
            raise SpiffeIdError(f"SPIFFE id {quoted(text)} must not contain {what} ({bad!r})")
    domain, slash, path = rest.partition("/")
    if not domain:
        raise SpiffeIdError(f"SPIFFE id {quoted(text)} has no trust domain")
    validate_domain(domain)
    if not slash or not path:
        raise SpiffeIdError(f"SPIFFE id {quoted(text)} has no path: it must name a role, e.g. /projector")
    parts = path.split("/")
    if "" in parts:
        raise SpiffeIdError(f"SPIFFE id {quoted(text)} has an empty path segment (a doubled or trailing '/')")
    return SpiffeId(domain, parts[0], tuple(parts[1:]))


def format(spiffe_id: SpiffeId) -> str:  # noqa: A001 - the inverse of parse, named as the task asks
    return spiffe_id.uri


def from_role(domain: str, role: str, name: str | None) -> SpiffeId:
    """Build an id from CLI-style input: ``--role gateway --name g1``; sidecar names are ``service/instance``."""
    if role not in ROLES:
        raise SpiffeIdError(f"role {quoted(role)} is not one of {', '.join(ROLES)}")
    names = ROLES[role]
    if not names:
        if name:
            raise SpiffeIdError(f"role {role!r} takes no name (got {quoted(name)})")
        return SpiffeId(domain, role, ())
    if not name:
        raise SpiffeIdError(f"role {role!r} needs a name: {'/'.join(f'<{n}>' for n in names)}")
    segments = tuple(name.split("/"))
    return SpiffeId(domain, role, segments)
