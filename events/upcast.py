"""Upcasters: turn an older payload shape into the current one, on read.

Invariant: an upcaster is a pure function of the old payload dict; it never
consults the clock or the mesh, so the same old record upcasts the same way in
the live projector and in replay. History in the log is never rewritten.
"""

from __future__ import annotations

from typing import Any, Callable

# (type, from_version) -> function producing the payload at from_version + 1
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _upcaster(event_type: str, from_version: int):
    def register(fn: Callable[[dict[str, Any]], dict[str, Any]]):
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


@_upcaster("instance.registered", 1)
def _registered_v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
    """v1 carried ``version`` as a top-level field and had no ``weight``."""
    new = dict(old)
    version = new.pop("version", None)
    labels = new.get("labels")
    if version is not None:
        labels = dict(labels) if isinstance(labels, dict) else {}
        labels.setdefault("version", version)
        new["labels"] = labels
    new.setdefault("weight", 1)
    return new


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply every upcaster from ``version`` up; unknown steps are identity (shape unchanged)."""
    current = payload
    step = version
    while (event_type, step) in _UPCASTERS:
        current = _UPCASTERS[(event_type, step)](current)
        step += 1
    return current
