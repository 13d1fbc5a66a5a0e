"""Errors raised by the events package.

Invariant: every rejection of input — a CLI argument, a rules file, a record
read back from Kafka — surfaces as ``EventValidationError`` carrying one or
more ``FieldProblem`` entries that name the field (as a dotted path) and the
problem in words. Callers never need to catch pydantic's or orjson's own
exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str  # dotted path such as "payload.routes.0.destinations"; "" for the whole document
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}" if self.field else self.problem


class EventValidationError(ValueError):
    """Input that is not a valid meshlog event (or event payload)."""

    def __init__(self, problems: list[FieldProblem] | tuple[FieldProblem, ...]):
        if not problems:
            problems = [FieldProblem("", "invalid event")]
        self.problems: tuple[FieldProblem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.problems)

    @classmethod
    def single(cls, field: str, problem: str) -> "EventValidationError":
        return cls([FieldProblem(field, problem)])
