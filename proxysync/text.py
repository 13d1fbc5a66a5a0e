"""Text from a client or from the log, made safe for a terminal, a log line or a record.

Invariant: the result has no control characters (they are written as
``\\xNN``/``\\uNNNN`` escapes, newlines and tabs included) and at most
``limit`` characters (a cut is marked with ``…``).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(text: str, limit: int = 2048) -> str:
    """``text`` with control and bidi characters escaped, cut to ``limit`` characters."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    out = _CONTROL.sub(_escape, text[: limit * 6])  # an escape is at most 6 characters: no need to look further
    if len(out) > limit:
        out = out[: limit - 1] + "…"
    return out
