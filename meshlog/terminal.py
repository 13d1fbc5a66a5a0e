"""Text that came from the log or from a client, made safe to show on a terminal.

Invariants:
- ``printable`` returns text with no control characters: C0/C1 controls, DEL,
  and the invisible format characters that reorder or hide text (bidi
  overrides, zero-width characters, line/paragraph separators) are written as
  visible escapes (``\\x1b``, ``\\u202e``); everything else is unchanged.
- Its result is bounded: at most ``limit`` characters of the original, then a
  note of how many were left out.
- ``plain_console`` never interprets text as Rich markup or emoji codes, so a
  producer named ``[/x]`` or ``:bomb:`` prints as those characters (and cannot
  raise ``MarkupError``).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

DEFAULT_LIMIT = 1024

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` with every control character escaped, cut after ``limit`` characters."""
    cut = text[:limit]
    safe = _UNSAFE.sub(_escape, cut)
    return safe if len(text) <= limit else f"{safe}… ({len(text) - limit} more characters)"


def plain_strings(doc: Any, limit: int = DEFAULT_LIMIT) -> Any:
    """A copy of a JSON-like document with every string (keys too) passed through ``printable``."""
    if isinstance(doc, str):
        return printable(doc, limit)
    if isinstance(doc, dict):
        return {plain_strings(k, limit) if isinstance(k, str) else k: plain_strings(v, limit) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [plain_strings(v, limit) for v in doc]
    return doc


def plain_console(**kwargs: Any) -> Console:
    """A Rich console that prints strings as they are: no markup, no emoji codes."""
    return Console(markup=False, emoji=False, **kwargs)
