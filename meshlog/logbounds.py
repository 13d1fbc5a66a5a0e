"""Bounds on what a client (or the log) can put into our log lines, and on how often.

Invariants:
- ``excerpt(text, limit)`` is at most ``limit`` characters plus a short
  ``…[+N chars]`` marker, never contains a control character (they are
  escaped, so one log line stays one line and a terminal stays sane), and is
  the text itself when that is short and printable.
- ``Throttle`` is a pure token bucket (the caller passes the clock): the first
  ``burst`` events pass, then one per ``interval`` seconds; every passing
  event learns how many were suppressed since the previous one, so a
  suppressed line is never silently lost, only counted.

Neither keeps anything per client: a caller holds one ``Throttle`` per stream
(or per process), so the memory is bounded by what the caller already holds.
"""

from __future__ import annotations

__all__ = ["excerpt", "Throttle"]


def _escape_char(ch: str) -> str:
    """A backslash, or a character ``str.isprintable`` refuses (controls, format and separator
    characters such as ESC, U+2028 or U+202E, lone surrogates), as a Python-style escape."""
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def excerpt(text: str, limit: int = 200) -> str:
    """``text`` as one printable, bounded line: escaped, then cut to ``limit`` characters.

    Only the first ``limit`` source characters are looked at (a 4 MB message
    costs what a 200-character one does); the marker says how many characters
    of the original were left out.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    head = text[:limit]
    out: list[str] = []
    length = 0
    used = 0
    for ch in head:
        piece = ch if ch.isprintable() and ch != "\\" else _escape_char(ch)
        if length + len(piece) > limit:
            break
        out.append(piece)
        length += len(piece)
        used += 1
    left_out = len(text) - used
    result = "".join(out)
    return f"{result}…[+{left_out} chars]" if left_out else result


class Throttle:
    """Token bucket for repeated log lines: ``burst`` at once, then one per ``interval`` seconds."""

    __slots__ = ("burst", "interval", "_tokens", "_at", "_suppressed")

    def __init__(self, *, burst: int = 3, interval: float = 10.0) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self._tokens = float(burst)
        self._at: float | None = None
        self._suppressed = 0

    def admit(self, now: float) -> int | None:
        """``None``: suppress this line. Else: log it, noting the returned count of lines suppressed before it."""
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return None
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    @property
    def suppressed(self) -> int:
        """Lines suppressed since the last one admitted (not yet reported)."""
        return self._suppressed
