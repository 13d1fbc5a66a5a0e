"""Upcasters: turn an older payload shape into the current one, on read.

Invariants:
- An upcaster is a pure function of the old payload dict; it never consults
  the clock or the mesh, so the same old record upcasts the same way in the
  live projector and in replay. History in the log is never rewritten.
- An upcaster converts, it does not repair: an old payload that was invalid
  in its own version stays invalid (it is left for validation to name the
  field, or refused here with ``EventValidationError``); nothing is dropped,
  defaulted over or coerced to make it pass.
"""

from __future__ import annotations

from typing import Any, Callable

from events.errors import EventValidationError

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
    if "weight" in old:
        raise EventValidationError.single("payload.weight", "is not a field of instance.registered version 1")
    new = dict(old)
    version = new.pop("version", None)
    if version is not None:
        labels = new.get("labels", {})
        if not isinstance(labels, dict):
            new["version"] = version  # not convertible: validation names what is wrong with the v1 payload
            return new
        if "version" in labels and labels["version"] != version:
            raise EventValidationError.single("payload.version", "differs from payload.labels.version")
        new["labels"] = {**labels, "version": version}
    new["weight"] = 1
    return new


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply every upcaster from ``version`` up; unknown steps are identity (shape unchanged)."""
    current = payload
    step = version
    while (event_type, step) in _UPCASTERS:
        current = _UPCASTERS[(event_type, step)](current)
        step += 1
    return current
