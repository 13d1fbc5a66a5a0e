"""Bad input exits 2 naming the field, before any broker is contacted."""

import pytest

from registrar.cli import EXIT_BAD_INPUT, EXIT_OK, main

# an address nothing listens on: if validation failed to stop the command the
# test would see exit 3 (broker unreachable) instead of 2
NOWHERE = ["--bootstrap", "127.0.0.1:1", "--timeout", "1"]
PUBLISH = ["publish", "--service", "web", "--instance-id", "web-1", "--address", "127.0.0.1"]


def test_port_out_of_range_exits_2_naming_port(capsys):
    with pytest.raises(SystemExit) as info:  # refused by the flag's type, before anything runs
        main([*NOWHERE, *PUBLISH, "--port", "70000"])
    assert info.value.code == EXIT_BAD_INPUT
    assert "argument --port: 70000 is not a port (1-65535)" in capsys.readouterr().err


def test_bad_label_names_the_flag(capsys):
    assert main([*NOWHERE, *PUBLISH, "--port", "80", "--label", "version"]) == EXIT_BAD_INPUT
    assert "--label" in capsys.readouterr().err


def test_half_a_sidecar_is_refused(capsys):
    assert main([*NOWHERE, *PUBLISH, "--port", "80", "--inbound-port", "15001"]) == EXIT_BAD_INPUT
    assert "--inbound-port/--outbound-port" in capsys.readouterr().err


def test_unknown_health_status(capsys):
    assert main([*NOWHERE, "health", "--service", "web", "--instance-id", "w", "--status", "sick"]) == EXIT_BAD_INPUT
    assert "status:" in capsys.readouterr().err


def test_rules_dry_run_validates_without_a_broker(tmp_path, capsys):
    f = tmp_path / "rules.yaml"
    f.write_text("kind: RouteRule\nhost: a\nrevision: 1\nroutes: [{destinations: [{}]}]\n")
    assert main([*NOWHERE, "rules", "apply", "-f", str(f), "--dry-run"]) == EXIT_OK
    assert "valid route_rule.upserted route/a" in capsys.readouterr().out


def test_missing_rules_file_is_bad_input(tmp_path, capsys):
    assert main([*NOWHERE, "rules", "apply", "-f", str(tmp_path / "nope.yaml")]) == EXIT_BAD_INPUT
    assert "cannot read" in capsys.readouterr().err


def test_unreachable_broker_exits_3_quickly(capsys):
    assert main([*NOWHERE, *PUBLISH, "--port", "80"]) == 3
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["publish", "--help"])
    assert info.value.code == 0
    assert "--depends-on" in capsys.readouterr().out
