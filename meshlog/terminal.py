"""Documents and consoles for text that came from the log or from a client.

Invariants:
- ``plain_strings`` passes every string of a document (keys too) through
  ``events.printable.printable``, the one escaping and bounding rule.
- ``plain_console`` never interprets text as Rich markup or emoji codes, so a
  producer named ``[/x]`` or ``:bomb:`` prints as those characters (and cannot
  raise ``MarkupError``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from events.printable import DEFAULT_LIMIT, printable


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
