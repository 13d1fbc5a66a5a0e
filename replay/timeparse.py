"""Parse the instants people type into ``replay``: ISO-8601 or relative.

Invariants: naive times are UTC; the result is always timezone-aware UTC;
``now`` is passed in (never read here), so parsing is pure and testable.
Any text gives an instant or ``BadTime`` — never another exception (an
instant outside datetime's years 1-9999 is a BadTime too; property-tested).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class BadTime(ValueError):
    pass


def parse_instant(text: str, now: datetime) -> datetime:
    """``2020-01-01T10:00`` (UTC), ``2020-01-01T12:00+02:00``, ``-15m``, ``-2h``, ``now``, or epoch ms ``@1577872800000``."""
    try:
        return _parse_instant(text, now)
    except (OverflowError, OSError, ValueError) as exc:  # out of datetime's range (year 1-9999, platform time_t)
        if isinstance(exc, BadTime):
            raise
        raise BadTime(f"not a usable time: {text[:80]!r} is out of range") from None


def _parse_instant(text: str, now: datetime) -> datetime:
    value = text.strip()
    if value == "now":
        return now.astimezone(timezone.utc)
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now - timedelta(seconds=seconds)).astimezone(timezone.utc)
    if value.startswith("@") and value[1:].isdigit():
        return datetime.fromtimestamp(int(value[1:]) / 1000, timezone.utc)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadTime(
            f"not a time: {text[:80]!r} (use ISO-8601 like 2020-01-01T10:00, naive means UTC; or -15m, -2h, now)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def to_ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)
