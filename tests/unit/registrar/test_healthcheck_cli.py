"""`registrar healthcheck` flags: a bad one exits 2 naming it, before any broker is contacted."""

import pytest

from registrar.cli import EXIT_BAD_INPUT, EXIT_BROKER, build_parser, main

# nothing listens there: a flag check that let the command through would exit 3, not 2
NOWHERE = ["--bootstrap", "127.0.0.1:1", "--timeout", "1"]


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--interval", "0"),
        ("--interval", "-1"),
        ("--timeout", "0"),
        ("--jitter", "1"),
        ("--jitter", "-0.1"),
        ("--interval", "nan"),
        ("--interval", "inf"),
        ("--timeout", "nan"),
        ("--fall", "0"),
        ("--rise", "0"),
        ("--http-path", "healthz"),
        ("--checker-id", ""),
        ("--checker-id", "has space"),
        ("--group", ""),
    ],
)
def test_bad_value_exits_2_naming_the_flag(capsys, flag, value):
    try:
        code = main([*NOWHERE, "healthcheck", f"{flag}={value}"])
    except SystemExit as exc:  # a number out of range is refused by the flag's argparse type
        code = exc.code
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{flag}:" in err, err


@pytest.mark.parametrize("flag", ["--interval", "--timeout", "--jitter", "--fall", "--rise"])
def test_unparsable_value_exits_2_naming_the_flag(capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main([*NOWHERE, "healthcheck", flag, "soon"])
    assert exc.value.code == EXIT_BAD_INPUT
    assert f"argument {flag}" in capsys.readouterr().err


def test_status_file_in_a_missing_directory_exits_2(tmp_path, capsys):
    assert main([*NOWHERE, "healthcheck", "--status-file", str(tmp_path / "no" / "s.json")]) == EXIT_BAD_INPUT
    assert "--status-file:" in capsys.readouterr().err


def test_unreachable_broker_exits_3(capsys):
    assert main(["--timeout", "1", "healthcheck", "--bootstrap", "127.0.0.1:1"]) == EXIT_BROKER
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_defaults_and_names_the_demo_depends_on():
    args = build_parser().parse_args(["healthcheck"])
    assert (args.group, args.interval, args.probe_timeout, args.jitter, args.fall, args.rise, args.http_path) == (
        "meshlog-healthcheck", 2.0, 1.0, 0.2, 3, 2, "/healthz",
    )
    assert args.status_file is None and args.checker_id
    # the global broker timeout is not the per-probe one
    args = build_parser().parse_args(["--timeout", "7", "healthcheck", "--timeout", "0.5", "--bootstrap", "h:1"])
    assert (args.timeout, args.probe_timeout, args.hc_bootstrap) == (7.0, 0.5, "h:1")


def test_other_subcommands_are_intact():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"publish", "deregister", "health", "rules", "healthcheck"} <= set(sub)


def test_a_checker_verifies_by_default_and_insecure_events_is_explicit(monkeypatch):
    monkeypatch.delenv("MESHLOG_INSECURE_EVENTS", raising=False)
    assert build_parser().parse_args(["healthcheck"]).insecure_events is False
    assert build_parser().parse_args(["healthcheck", "--insecure-events"]).insecure_events is True
    monkeypatch.setenv("MESHLOG_INSECURE_EVENTS", "1")  # one switch for the environment, as the projector's
    assert build_parser().parse_args(["healthcheck"]).insecure_events is True
