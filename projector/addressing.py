"""Pure facts about addresses and mesh identities that render *inputs* need (no protobuf).

``render_view.Renderer`` reads the state into render inputs with these, and
the builders (``render_envoy``, ``mesh_tls``, which import protobuf and the
Envoy API) turn inputs into messages. Keeping them apart lets a reader that
needs versions only (``replay at --json``, the walks: ``projector.versioning``)
never import the Envoy API.

Invariants: every function here is pure and deterministic; the builders
re-export them, so there is one definition of each.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Iterable

# every inbound listener admits the central health checkers (they probe through it, ``registrar healthcheck``)
CHECKER_ROLE = "checker"

# exactly the IPv4 literals ``ipaddress`` accepts: four ASCII decimal octets 0-255, no leading zeros
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z", re.ASCII)


@lru_cache(maxsize=1 << 16)
def is_ip(address: str) -> bool:
    """Is ``address`` an IPv4 or IPv6 literal (as ``ipaddress.ip_address`` decides)?

    Cached: every endpoints body asks it of each instance's address, on every render of the body. An IPv4
    literal, nearly every address, is recognized by one regex match (a fifth of ``ipaddress``' parse, which a
    fresh replay pays once per instance); anything else is left to ``ipaddress``.
    """
    if _IPV4.match(address):
        return True
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def bind_address(instance_address: str) -> str:
    """Where an inbound listener binds: the instance's IP, or every IPv4 address for a hostname."""
    return instance_address if is_ip(instance_address) else "0.0.0.0"


def sidecar_prefix(domain: str, service: str | None = None) -> str:
    """``spiffe://<domain>/sidecar/`` or, for one service, ``spiffe://<domain>/sidecar/<service>/``."""
    return f"spiffe://{domain}/sidecar/" if service is None else f"spiffe://{domain}/sidecar/{service}/"


def allowed_principals(domain: str, callers: Iterable[str], allow_mesh: bool) -> tuple[str, ...]:
    """The URI SAN prefixes an inbound listener admits, sorted.

    ``allow_mesh``: every sidecar of the trust domain; otherwise each caller
    service's sidecars. The health checkers are always admitted.
    """
    prefixes = {f"spiffe://{domain}/{CHECKER_ROLE}/"}
    if allow_mesh:
        prefixes.add(sidecar_prefix(domain))
    else:
        prefixes.update(sidecar_prefix(domain, c) for c in callers)
    return tuple(sorted(prefixes))
