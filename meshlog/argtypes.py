"""Argument types shared by every meshlog command line (``type=`` for argparse).

Invariants:
- A value these accept is usable as is: a port is an int in its range (never
  wrapped modulo 65536 by a socket call), a duration is a finite float in its
  range (never NaN or infinity), a broker or gateway address is a list of
  HOST:PORT whose host is a valid IP literal or host name and whose port is
  1-65535.
- A value they refuse raises ``argparse.ArgumentTypeError`` with the problem
  in words; argparse then names the flag and exits 2 before anything runs.
- The same checks are exposed as plain functions returning the problem (or
  None) for the one CLI that reports every problem at once
  (``meshlog-sidecar run``) and for addresses that do not come from a flag
  (``$MESHLOG_KAFKA_BOOTSTRAP``).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

MAX_PORT = 65535


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except (ValueError, AttributeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def port_problem(value: int, *, zero_picks_free: bool = False) -> str | None:
    low = 0 if zero_picks_free else 1
    if low <= value <= MAX_PORT:
        return None
    what = "1-65535, or 0 to pick a free one" if zero_picks_free else "1-65535"
    return f"{value} is not a port ({what})"


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = _integer(text)
    problem = port_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def port_or_free(text: str) -> int:
    """A TCP port, or 0 for "pick a free one" (the listener reports the port it bound)."""
    value = _integer(text)
    problem = port_problem(value, zero_picks_free=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def integer(low: int, high: int) -> Callable[[str], int]:
    """A whole number in [low, high]."""

    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    parse.__name__ = f"integer {low}-{high}"
    return parse


def name(max_len: int) -> Callable[[str], str]:
    """A name of 1 to ``max_len`` printable characters without whitespace (a group, a worker id)."""

    def parse(text: str) -> str:
        if not 1 <= len(text) <= max_len or not text.isprintable() or any(c.isspace() for c in text):
            raise argparse.ArgumentTypeError(f"must be 1-{max_len} printable characters without whitespace")
        return text

    parse.__name__ = "name"
    return parse


def seconds(low: float = 0.0, high: float = 86_400.0, *, low_inclusive: bool = False) -> Callable[[str], float]:
    """A finite duration in seconds, above ``low`` (or at it, with ``low_inclusive``) and at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        in_range = (low <= value if low_inclusive else low < value) and value <= high
        if not math.isfinite(value) or not in_range:
            bound = f"at least {low:g}" if low_inclusive else f"more than {low:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration {bound} and at most {high:g} seconds")
        return value

    parse.__name__ = "seconds"
    return parse


def number(low: float, high: float) -> Callable[[str], float]:
    """A finite number in [low, high] (a rate, a fraction)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text!r} is not between {low:g} and {high:g}")
        return value

    parse.__name__ = "number"
    return parse


# ---------------------------------------------------------------- addresses


def host_port_problem(address: str) -> str | None:
    """The problem with one ``HOST:PORT`` (``[v6]:PORT`` for IPv6), or None."""
    from events.types import check_address

    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        return f"{address!r} is not HOST:PORT"
    if not port_text.isdigit() or len(port_text) > 5:
        return f"{address!r}: port {port_text!r} is not a number"
    bad_port = port_problem(int(port_text))
    if bad_port:
        return f"{address!r}: {bad_port}"
    if host.startswith("["):
        if not host.endswith("]"):
            return f"{address!r}: unbalanced '[' around the IPv6 address"
        host = host[1:-1]
        if ":" not in host:
            return f"{address!r}: only IPv6 addresses go in [...]"
    elif ":" in host:
        return f"{address!r}: write an IPv6 address as [ADDRESS]:PORT"
    try:
        check_address(host)
    except ValueError as exc:
        return f"{address!r}: host {exc}"
    return None


def address_list_problem(addresses: str) -> str | None:
    """The problem with a comma-separated ``HOST:PORT`` list (a Kafka bootstrap), or None."""
    items = [a.strip() for a in addresses.split(",")]
    if not any(items):
        return "no HOST:PORT given"
    for item in items:
        if not item:
            return f"{addresses!r} has an empty entry"
        problem = host_port_problem(item)
        if problem:
            return problem
    return None


def host_port(text: str) -> str:
    """One ``HOST:PORT`` (an xDS gateway)."""
    problem = host_port_problem(text.strip())
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def bootstrap(text: str) -> str:
    """A Kafka bootstrap list: ``HOST:PORT[,HOST:PORT...]``."""
    problem = address_list_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return ",".join(a.strip() for a in text.split(","))


def https_url_problem(url: str) -> str | None:
    """The problem with an ``https://HOST:PORT[/path]`` endpoint (``meshlog ca serve``'s), or None."""
    from urllib.parse import urlsplit

    shown = repr(url[:80])
    if not url.startswith("https://"):
        return f"{shown} is not an https:// URL (the CA is only spoken to over TLS)"
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"{shown} contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"{shown}: {exc}"
    if not parts.hostname:
        return f"{shown} names no host"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"{shown}: give only https://HOST[:PORT][/PATH] (no user, query or fragment)"
    return None


def https_url(text: str) -> str:
    """An ``https://HOST[:PORT][/PATH]`` endpoint."""
    problem = https_url_problem(text.strip())
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text.strip()
