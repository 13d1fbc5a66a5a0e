"""Parse a rules file (YAML or JSON, one or many documents) into payloads.

Invariant: either every document in the file is valid and a list of payloads
is returned, or ``EventValidationError`` names the document (by position and
name) and the field of each problem; nothing is appended for a partly valid
file.

Document shape::

    kind: RouteRule            # or DestinationPolicy, AccessPolicy
    host: reviews              # RouteRule: the called service
    revision: 3
    routes: [...]              # see events.types.RouteRuleUpserted

A document may also be a list of such mappings.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from events.codec import validate_payload
from events.errors import EventValidationError, FieldProblem
from events.types import AccessPolicyUpserted, DestinationPolicyUpserted, Payload, RouteRuleUpserted

KINDS: dict[str, type[Payload]] = {
    "RouteRule": RouteRuleUpserted,
    "DestinationPolicy": DestinationPolicyUpserted,
    "AccessPolicy": AccessPolicyUpserted,
}


def _load_documents(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [orjson.loads(text)]
        except orjson.JSONDecodeError:
            pass  # JSON is a subset of YAML in practice; let the YAML parser report the position
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EventValidationError.single("", f"{source}: not valid YAML or JSON{where}") from None
    except RecursionError:  # the YAML parser recurses per nesting level
        raise EventValidationError.single("", f"{source}: nested too deeply") from None


def parse_rules(text: str, source: str = "rules file") -> list[Payload]:
    try:
        return _parse_rules(text, source)
    except RecursionError:  # a self-referencing YAML alias (`a: &a [*a]`) validated as a nested field
        raise EventValidationError.single("", f"{source}: nested too deeply (or refers to itself)") from None


def _parse_rules(text: str, source: str) -> list[Payload]:
    docs: list[Any] = []
    for doc in _load_documents(text, source):
        docs.extend(doc if isinstance(doc, list) else [doc])
    if not docs:
        raise EventValidationError.single("", f"{source}: contains no documents")
    payloads: list[Payload] = []
    problems: list[FieldProblem] = []
    seen: set[str] = set()
    for index, doc in enumerate(docs, start=1):
        label = f"document {index}"
        if not isinstance(doc, dict):
            problems.append(FieldProblem(label, f"must be a mapping, got {type(doc).__name__}"))
            continue
        kind = doc.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:  # (a list or a mapping is not even hashable)
            shown = repr(kind) if len(repr(kind)) <= 80 else repr(kind)[:77] + "..."
            problems.append(FieldProblem(f"{label}.kind", f"must be one of {', '.join(KINDS)}, got {shown}"))
            continue
        body = {k: v for k, v in doc.items() if k != "kind"}
        name = body.get("host") or body.get("service")
        if isinstance(name, str):
            label = f"{label} ({kind} {name})"
        try:
            payload = validate_payload(KINDS[kind], body, label)
        except EventValidationError as exc:
            problems.extend(exc.problems)
            continue
        if payload.key() in seen:
            problems.append(FieldProblem(label, "the same rule appears twice in one file"))
            continue
        seen.add(payload.key())
        payloads.append(payload)
    if problems:
        raise EventValidationError(problems)
    return payloads
