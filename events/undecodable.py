"""Reading past records that do not decode: the one way every reader of the log does it.

The log keeps a bad record forever, so every reader (the projector, replay,
the health checkers, the demo's event tail) meets it on every read. Each of
them decodes through ``decode_or_skip``, which gives the event or notes the
record in the reader's ``UndecodableLog`` and returns None: skip it, say so,
go on (replay's per-record loop, ``replay.source.iter_cut``, does the same
inline: catch ``EventValidationError``, ``note`` the record).

Invariants:
- A reader never stops on a record: ``decode_record`` is total
  (``events.codec``), so the only failure is ``EventValidationError``.
- What is kept and said about a record is bounded and printable:
  ``printable`` escapes control characters (a record cannot move a
  terminal's cursor or forge a log line) and cuts to a length limit; an
  ``Undecodable`` holds the record's position and such a reason, never its
  value.
- Logging is bounded per reader: one line each for the first ``log_first``
  records, then one line each time the count reaches a power of ten; the
  count and the last ``keep`` entries are always there to report.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, NamedTuple

from events.codec import decode_record
from events.envelope import Logged
from events.errors import EventValidationError
from events.printable import printable

REASON_MAX = 512  # characters of a reason kept for a report or a log line

class Undecodable(NamedTuple):
    """A record a reader skipped: where it is in the log, and why (bounded, printable)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    reason: str


def undecodable(record: Any, error: BaseException | str) -> Undecodable:
    return Undecodable(
        printable(record.topic, 256), record.partition, record.offset, record.timestamp,
        printable(error, REASON_MAX) or "invalid",
    )


class UndecodableLog:
    """What one reader skipped: a count, the last ``keep`` entries, and a bounded number of log lines."""

    def __init__(self, logger: logging.Logger | None, *, reader: str, keep: int = 100, log_first: int = 10) -> None:
        self.logger = logger
        self.reader = reader
        self.count = 0
        self.recent: deque[Undecodable] = deque(maxlen=keep)
        self.log_first = log_first
        self._next_summary = max(10, 10 ** len(str(log_first)))

    @property
    def last(self) -> Undecodable | None:
        return self.recent[-1] if self.recent else None

    def note(self, record: Any, error: BaseException | str) -> Undecodable:
        entry = undecodable(record, error)
        self.count += 1
        self.recent.append(entry)
        if self.logger is not None:
            if self.count <= self.log_first:
                self.logger.warning(
                    "%s: skipping undecodable record %s/%d/%d: %s",
                    self.reader, entry.topic, entry.partition, entry.offset, entry.reason,
                )
                if self.count == self.log_first:
                    self.logger.warning("%s: further undecodable records are counted, not logged one by one",
                                        self.reader)
            elif self.count >= self._next_summary:
                self._next_summary *= 10
                self.logger.warning("%s: %d undecodable records skipped so far (last: %s/%d/%d: %s)",
                                    self.reader, self.count, entry.topic, entry.partition, entry.offset, entry.reason)
        return entry


def try_decode(record: Any, decoder: Callable[[Any], Logged] = decode_record) -> Logged | EventValidationError:
    """The record's event, or the reason it has none (for a reader that does more than skip: the projector)."""
    try:
        return decoder(record)
    except EventValidationError as exc:
        return exc


def decode_or_skip(
    record: Any, skipped: UndecodableLog, decoder: Callable[[Any], Logged] = decode_record
) -> Logged | None:
    """The record's event, or None after noting it in ``skipped``."""
    got = try_decode(record, decoder)
    if isinstance(got, EventValidationError):
        skipped.note(record, got)
        return None
    return got
