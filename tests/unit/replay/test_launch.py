"""The ``replay`` console script's garbage-collector policy (``replay.launch``)."""

from __future__ import annotations

import gc
import sys

import pytest

from replay import cli, launch


@pytest.fixture
def collector_restored():
    was = gc.isenabled()
    yield
    gc.unfreeze()
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize(
    "argv, collects",
    [
        (["--at", "-5m", "--json"], False),  # the short form of `replay at`
        (["--bootstrap", "h:1", "at", "--at", "now"], False),
        (["diff", "--from", "-1h", "--to", "now"], True),  # walks render at every step: cyclic garbage
        (["log", "--from", "-1h", "--to", "now"], True),
        (["serve", "--at", "now"], True),  # long-running
        (["ui"], True),
        (["--help"], True),
    ],
)
def test_only_a_one_shot_replay_at_runs_without_the_collector(monkeypatch, collector_restored, argv, collects):
    seen = {}

    def fake_main(args):
        seen["argv"] = list(args)
        seen["collecting"] = gc.isenabled()
        return 7

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["replay", *argv])
    gc.enable()
    assert launch.main() == 7  # the CLI's own exit code
    assert seen == {"argv": argv, "collecting": collects}
    # what existed at the start (the imported modules) is frozen: no later collection walks it again
    assert gc.get_freeze_count() > 0


def test_command_of_reads_the_command_line_as_the_parser_does():
    assert cli.command_of(["--at", "now"]) == "at"
    assert cli.command_of(["--bootstrap", "h:1", "log", "--from", "-1h", "--to", "now"]) == "log"
    assert cli.command_of(["-h"]) is None
    assert cli.command_of([]) is None
