"""Bad input at every command line exits 2 naming the flag or field, before any broker is asked.

Two kinds of test: behaviour through each CLI's ``main`` (issue 11's reproductions), and a walk
over every parser of every console script that holds each numeric and address flag to the
shared types in ``meshlog.argtypes`` (so a new ``--port`` with ``type=int`` fails here).
"""

from __future__ import annotations

import argparse
import io
import math

import pytest

from meshlog import argtypes

NO_BROKER_ENV = {"MESHLOG_KAFKA_BOOTSTRAP": None}


@pytest.fixture
def no_broker(monkeypatch, tmp_path):
    """No broker address anywhere: an argument error must be found before the missing broker is."""
    monkeypatch.delenv("MESHLOG_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("MESHLOG_HOME", str(tmp_path))


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own exit for a bad flag
        return exc.code


PUBLISH = ["publish", "--service", "a", "--instance-id", "a-1", "--address", "10.0.0.1", "--port", "80"]


# ---------------------------------------------------------------- issue 11, item 6


def test_rules_file_with_a_list_as_kind(no_broker, monkeypatch, capsys):
    from registrar import cli

    monkeypatch.setattr("sys.stdin", io.StringIO("kind: [x]\n"))
    assert _exit_code(cli.main, ["rules", "apply", "-f", "-", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "document 1.kind: must be one of RouteRule, DestinationPolicy, AccessPolicy, got ['x']" in err
    assert "Traceback" not in err


def test_rules_file_nested_too_deeply(no_broker, monkeypatch, capsys):
    from registrar import cli

    monkeypatch.setattr("sys.stdin", io.StringIO("[" * 5000 + "]" * 5000))
    assert _exit_code(cli.main, ["rules", "apply", "-f", "-", "--dry-run"]) == 2
    assert "nested too deeply" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["rules", "delete", "--route", "x", "--revision", "1000000000000000000000000000000"], "argument --revision:"),
    (["rules", "delete", "--route", "x", "--revision", "0"], "argument --revision:"),
    (["--timeout", "nan", *PUBLISH], "argument --timeout: 'nan'"),
    (["--timeout", "inf", *PUBLISH], "argument --timeout: 'inf'"),
    (["--timeout", "-1", *PUBLISH], "argument --timeout: '-1'"),
    (["--bootstrap", "a:xx", *PUBLISH], "argument --bootstrap: 'a:xx': port 'xx' is not a number"),
    (["--bootstrap", "a:1,", *PUBLISH], "argument --bootstrap:"),
    (["--bootstrap", "a:0", *PUBLISH], "argument --bootstrap: 'a:0': 0 is not a port"),
    (["--bootstrap", "::1:9092", *PUBLISH], "argument --bootstrap: '::1:9092': write an IPv6 address as [ADDRESS]:PORT"),
    (["healthcheck", "--interval", "nan"], "argument --interval:"),
    (["healthcheck", "--jitter", "nan"], "argument --jitter:"),
    (["healthcheck", "--bootstrap", "x:99999"], "argument --bootstrap:"),
])
def test_registrar_flags_exit_2_naming_the_flag(no_broker, capsys, argv, expected):
    from registrar import cli

    assert _exit_code(cli.main, argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_malformed_bootstrap_in_the_environment_is_named(monkeypatch, capsys):
    from registrar import cli

    monkeypatch.setenv("MESHLOG_KAFKA_BOOTSTRAP", "a:xx")
    assert cli.main(PUBLISH) == 3
    assert "$MESHLOG_KAFKA_BOOTSTRAP: 'a:xx': port 'xx' is not a number" in capsys.readouterr().err


def test_a_revision_beyond_64_bits_in_a_rules_file_is_a_field_problem():
    from events.errors import EventValidationError
    from registrar.rules_file import parse_rules

    text = "kind: RouteRule\nhost: x\nrevision: 1000000000000000000000000000000\nroutes: [{destinations: [{weight: 100}]}]"
    with pytest.raises(EventValidationError) as info:
        parse_rules(text)
    assert info.value.fields == ("document 1 (RouteRule x).revision",)


# ---------------------------------------------------------------- issue 11, item 7


@pytest.mark.parametrize("port", ["99999", "70000", "-5", "65536", "x"])
def test_xds_gateway_refuses_ports_out_of_range(no_broker, capsys, port):
    from xds_gateway import cli

    assert _exit_code(cli.main, ["run", "--port", port]) == 2
    assert "argument --port:" in capsys.readouterr().err


def test_zero_still_picks_a_free_port_where_that_is_the_contract():
    from replay.cli import build_parser as replay_parser
    from xds_gateway.cli import build_parser as gateway_parser

    assert gateway_parser().parse_args(["run", "--port", "0", "--http-port", "0"]).port == 0
    assert replay_parser().parse_args(["serve", "--at", "now", "--port", "0"]).port == 0


def _parsers():
    from meshlog.cli import build_parser as meshlog_parser
    from projector.cli import build_parser as projector_parser
    from proxy.options import build_parser as sidecar_parser
    from registrar.cli import build_parser as registrar_parser
    from replay.cli import build_parser as replay_parser
    from xds_gateway.cli import build_parser as gateway_parser

    for build in (meshlog_parser, registrar_parser, projector_parser, gateway_parser, replay_parser, sidecar_parser):
        yield from _walk(build())


def _walk(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)
        elif action.option_strings:
            yield parser.prog, action


# flags whose plain int is range-checked by the event payload they fill (the message names the field)
CHECKED_BY_THE_PAYLOAD = {("registrar publish", "--weight"), ("meshlog-sidecar run", "--weight")}


def test_every_flag_of_every_command_uses_the_shared_types():
    wrong = []
    for prog, action in _parsers():
        flag = action.option_strings[-1]
        if flag.endswith("port"):
            if action.type not in (argtypes.port, argtypes.port_or_free):
                wrong.append(f"{prog} {flag}: {action.type} is not argtypes.port/port_or_free")
        elif flag == "--bootstrap":
            if action.type is not argtypes.bootstrap:
                wrong.append(f"{prog} {flag}: not argtypes.bootstrap")
        elif action.type in (int, float) and (prog, flag) not in CHECKED_BY_THE_PAYLOAD:
            wrong.append(f"{prog} {flag}: bare {action.type.__name__} (no range, NaN/inf pass)")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_every_port_flag():
    ports = {(prog, action.option_strings[-1]) for prog, action in _parsers()
             if action.option_strings[-1].endswith("port")}
    assert {("xds-gateway run", "--port"), ("xds-gateway run", "--http-port"), ("replay serve", "--port"),
            ("meshlog kafka up", "--port"), ("meshlog demo-app", "--port"), ("meshlog demo-client", "--port"),
            ("meshlog-sidecar run", "--status-port"), ("registrar publish", "--inbound-port")} <= ports


# ---------------------------------------------------------------- the shared types themselves


@pytest.mark.parametrize("text", ["0", "65536", "99999", "-5", "1e3", "", "8080.0", " "])
def test_port_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        argtypes.port(text)


def test_port_accepts_its_range():
    assert [argtypes.port(t) for t in ("1", "65535", " 80 ")] == [1, 65535, 80]
    assert argtypes.port_or_free("0") == 0


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "0", "1e10", "abc"])
def test_seconds_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        argtypes.seconds(0, 3600)(text)


def test_seconds_low_inclusive():
    assert argtypes.seconds(0, 10, low_inclusive=True)("0") == 0
    assert math.isclose(argtypes.seconds(0, 10)("2.5"), 2.5)


@pytest.mark.parametrize("text, ok", [
    ("127.0.0.1:9092", True), ("kafka-1:9092,kafka-2:9092", True), ("[::1]:9092", True), ("localhost:1", True),
    ("a:xx", False), ("a", False), (":9092", False), ("a:1,", False), ("999.1.1.1:9092", False),
    ("1.2.3:9092", False), ("[::1:9092", False), ("[1.2.3.4]:9092", False), ("a b:1", False), ("a:123456", False),
])
def test_bootstrap_lists(text, ok):
    assert (argtypes.address_list_problem(text) is None) is ok


# ---------------------------------------------------------------- issue 11, item 9


@pytest.mark.parametrize("argv, expected", [
    (["--at", "not-a-time"], "--at: not a time: 'not-a-time'"),
    (["at", "--at", "-99999999999w"], "--at: not a usable time"),
    (["--at", "now", "--xds"], "--xds, --full and --accepted need --node N"),
    (["diff", "--from", "now", "--to", "-1h"], "is after --to"),
    (["log", "--from", "garbage", "--to", "now"], "--from: not a time"),
    (["log", "--from", "-1h", "--to", "@99999999999999999999"], "--to: not a usable time"),
    (["serve", "--at", "yesterday"], "--at: not a time"),
])
def test_replay_rejects_arguments_before_looking_for_a_broker(no_broker, capsys, argv, expected):
    from replay import cli

    assert _exit_code(cli.main, argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "no Kafka address" not in err


def test_replay_with_good_arguments_then_needs_a_broker(no_broker, capsys):
    from replay import cli

    assert cli.main(["--at", "now"]) == 3
    assert "no Kafka address" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 11, item 8 (the write side)


@pytest.mark.parametrize("flag, value, field", [
    ("--node-id", "x\n\x1b[2J", "node_id:"),
    ("--node-id", "[/x]", "node_id:"),
    ("--address", "999.1.1.1", "address: looks like an IPv4 address but is not one"),
    ("--address", "1.2.3", "address: looks like an IPv4 address but is not one"),
])
def test_registrar_refuses_unprintable_node_ids_and_bad_ip_literals(no_broker, capsys, flag, value, field):
    from registrar import cli

    argv = ["publish", "--service", "a", "--instance-id", "a-1", "--address", "10.0.0.1", "--port", "80", flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"invalid input: {field}" in err and "\x1b" not in err
