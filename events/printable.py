"""Text from a client or from the log, made safe for a terminal, a log line or a record: the one rule.

Every place that shows or keeps untrusted text (log lines, terminal tables,
dead-letter and sync records, replay's console) goes through ``printable``;
it lives in ``events/`` because that is the lowest layer that needs it
(``events.undecodable``), and it imports nothing.

Invariants:
- The result has no character ``str.isprintable`` refuses: C0/C1 controls
  and DEL (newlines and tabs included), format characters (bidi overrides
  and isolates, zero-width characters, the BOM, tag characters), line and
  paragraph separators, lone surrogates, non-ASCII spaces, private-use and
  unassigned code points. Each is written as a visible Python-style escape
  (``\\x1b``, ``\\u202e``, ``\\U000e0041``), so one log line stays one line,
  a terminal's cursor cannot be moved and text cannot be reordered or hidden.
  Everything else (letters of any script, emoji, punctuation) is unchanged.
- The result is at most ``limit`` characters, the marker included, so it fits
  a record field with a max_length. A cut is marked ``…[+N chars]`` (N: the
  characters of the original left out) when that fits in ``limit``, else
  ``…``; an escape is never cut in half.
- ``quoted`` is the same rule for a value named inside an error message:
  ``repr`` of its ``str`` cut to ``limit`` characters (a cut marked ``…``),
  so it is quoted, escaped (``repr`` escapes exactly what ``str.isprintable``
  refuses) and bounded.
- Only the first ``limit`` characters of the original are ever looked at
  (each yields at least one character): a 4 MB message costs what a short one does.
"""

from __future__ import annotations

__all__ = ["printable", "quoted", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 1024


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _marker(left_out: int) -> str:
    return f"…[+{left_out} chars]"


def printable(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` (``str()`` of it if not a string) escaped and cut to at most ``limit`` characters."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text if isinstance(text, str) else str(text)
    head = text[:limit]
    if len(text) <= limit and head.isprintable():
        return text
    pieces = [ch if ch.isprintable() else _escape_char(ch) for ch in head]
    # ends[k]: the length of the first k pieces joined
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    if len(text) <= limit and ends[-1] <= limit:
        return "".join(pieces)
    # keep the most pieces that leave room for the marker that counts what they leave out
    kept = len(pieces)
    while kept > 0 and ends[kept] + len(_marker(len(text) - kept)) > limit:
        kept -= 1
    if kept > 0 or len(_marker(len(text))) <= limit:
        return "".join(pieces[:kept]) + _marker(len(text) - kept)
    while kept < len(pieces) and ends[kept + 1] + 1 <= limit:  # too small a limit for a count: a bare ellipsis
        kept += 1
    return "".join(pieces[:kept]) + "…"


def quoted(value: object, limit: int = 80) -> str:
    """``value`` as an error message names it: quoted, escaped and at most ``limit`` characters of it."""
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")
