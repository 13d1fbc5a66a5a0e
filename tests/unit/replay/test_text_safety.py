"""Whatever the log holds, replay's text output is plain, escaped, bounded text (issue 11, item 8)."""

from __future__ import annotations

import dataclasses
import io

from projector.fold import fold_many
from projector.state import empty_state
from replay import report, text
from replay.engine import Walker
from tests.unit.projector.helpers import Log

NASTY = "[/x][bold red]boom[/] :bomb: \x1b[2J\x1b]0;title\x07\u202eevil\nsecond line"


def _printed(print_fn, doc) -> str:
    out = io.StringIO()
    print_fn(text.console(file=out), doc)
    return out.getvalue()


def _assert_plain(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
    assert "\\x1b[2J" in output  # escaped, visible
    assert "[/x][bold" in output  # markup shown as typed, not interpreted
    assert ":bomb:" in output  # no emoji substitution
    assert "\\u202eevil" in output and "\\x0asecond" in output  # no injected line breaks


def _nasty_events():
    log = Log()
    reg = log.register("a", "a1", "10.0.0.1", node_id="n", sidecar=(15001, 15002))
    # a producer is free text in the envelope; a node id like this predates the node-id rule
    payload = reg.envelope.payload.model_copy(update={"node_id": NASTY})
    envelope = dataclasses.replace(reg.envelope, producer=NASTY, payload=payload)
    log.events[-1] = dataclasses.replace(reg, envelope=envelope)
    return log


def test_log_output_escapes_producers_keys_and_dead_letter_reasons():
    log = _nasty_events()
    walker = Walker(empty_state())
    steps = [walker.step([e]) for e in log.events]
    dead = {"time": "t", "timestamp_ms": 1, "source": {"topic": NASTY, "partition": 0, "offset": 3},
            "reason": NASTY, "stage": "decode", "recorded": True}
    doc = report.log_document(from_ms=0, to_ms=9, service=None, node=None, steps=steps, dead_letters=[dead])
    _assert_plain(_printed(text.print_log, doc))


def test_mesh_output_escapes_node_ids():
    log = _nasty_events()
    state, _ = fold_many(empty_state(), log.events)
    doc = report.mesh_document(state, None, at_ms=5, source={}, service=None)
    _assert_plain(_printed(lambda c, d: text.print_mesh(c, d, limit=0), doc))


def test_mesh_output_escapes_what_a_limited_table_shows_and_the_problems():
    # only the rows shown are made plain (the document holds the whole mesh): the shown rows, the header
    # and the problems must still be
    log = _nasty_events()
    log.register("b", "b1", "10.0.0.2", node_id="m", sidecar=(15001, 15002))
    state, _ = fold_many(empty_state(), log.events)
    doc = report.mesh_document(state, None, at_ms=5, source={"snapshot": {"offset": NASTY, "events": 1}}, service=None)
    doc["problems"] = [NASTY]
    out = _printed(lambda c, d: text.print_mesh(c, d, limit=1), doc)
    _assert_plain(out)
    assert "\\\\x1b" not in out and out.count("\\x1b[2J") == 4  # header, instance row, node row, problem: once each
    assert "1 more nodes" in out


def test_diff_output_escapes_causes():
    log = _nasty_events()
    walker = Walker(empty_state())
    steps = [walker.step([e]) for e in log.events]
    doc = report.diff_document(from_ms=0, to_ms=9, node=None, start_versions=walker.start_versions,
                               end_versions=walker.versions(), start_membership=walker.start_membership,
                               end_membership=walker.membership(), steps=steps,
                               undecodable=[{"time": "t", "source": {"topic": "x", "partition": 0, "offset": 1},
                                             "reason": NASTY, "recorded": False}])
    _assert_plain(_printed(text.print_diff, doc))


def test_a_huge_string_is_bounded():
    log = Log()
    reg = log.register("a", "a1", "10.0.0.1")
    log.events[-1] = dataclasses.replace(reg, envelope=dataclasses.replace(reg.envelope, producer="p" * 1_000_000))
    walker = Walker(empty_state())
    doc = report.log_document(from_ms=0, to_ms=9, service=None, node=None, steps=[walker.step(log.events)])
    output = _printed(text.print_log, doc)
    assert len(output) < 20_000 and "chars]" in output
