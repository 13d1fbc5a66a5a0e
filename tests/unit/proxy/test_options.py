"""``meshlog-sidecar run`` argument validation: every problem named by its flag, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlog.bootstrap import NoBrokerAddress
from proxy import cli
from proxy.options import BadArguments, build_parser, options_from_args

BASE = ["run", "--service", "web", "--instance-id", "w1", "--app-port", "8080", "--inbound-port", "15001",
        "--outbound-port", "15002", "--gateway", "127.0.0.1:18000", "--bootstrap", "127.0.0.1:9092", "--insecure"]


def _resolve(explicit):
    if explicit:
        return explicit
    raise NoBrokerAddress("no Kafka address: pass --bootstrap HOST:PORT")


def parse(*extra: str, base=BASE):
    args = build_parser().parse_args([*base, *extra])
    return options_from_args(args, resolve_bootstrap=_resolve, free_port=lambda: 19901)


def problems(*extra: str, base=BASE) -> tuple[str, ...]:
    with pytest.raises(BadArguments) as info:
        parse(*extra, base=base)
    return info.value.problems


def test_defaults_and_the_registration_published():
    o = parse("--label", "version=v2", "--label", "zone=a", "--depends-on", "reviews", "--gateway", "127.0.0.1:18001")
    r = o.registration
    # the app's port is `port`; other nodes reach this instance on the sidecar's inbound port
    assert (r.service, r.instance_id, r.address, r.port) == ("web", "w1", "127.0.0.1", 8080)
    assert (r.sidecar.inbound_port, r.sidecar.outbound_port) == (15001, 15002)
    assert r.labels == {"version": "v2", "zone": "a"} and r.depends_on == ("reviews",)
    assert r.node_id == o.node_id == "web-w1"
    assert o.node_cluster == "web"
    assert o.gateways == ("127.0.0.1:18000", "127.0.0.1:18001")
    assert o.admin_port == 19901 and o.base_id == 19901  # a free port; the base id follows it
    assert o.cache_dir.name == "web-w1" and o.status_file == o.cache_dir / "status.json"
    assert o.locality_zone == "a"
    assert o.hot_restart and o.drain_seconds == 5.0


def test_explicit_values_win(tmp_path):
    o = parse("--node-id", "n-1", "--admin-port", "9901", "--base-id", "77", "--cache-dir", str(tmp_path),
              "--no-hot-restart", "--drain-seconds", "0", "--weight", "3", "--protocol", "grpc")
    assert (o.node_id, o.admin_port, o.base_id, o.cache_dir) == ("n-1", 9901, 77, Path(tmp_path))
    assert not o.hot_restart and o.drain_seconds == 0
    assert o.registration.weight == 3 and o.registration.protocol == "grpc"


@pytest.mark.parametrize("extra, expected", [
    (["--gateway", "nohost"], "--gateway: 'nohost' is not HOST:PORT"),
    (["--gateway", "127.0.0.1:18000"], "--gateway: an address is given twice"),
    (["--gateway", "h:99999"], "--gateway: 'h:99999': 99999 is not a port (1-65535)"),
    (["--label", "version"], "--label: 'version' is not KEY=VALUE"),
    (["--label", "a=1", "--label", "a=2"], "--label: 'a' given twice"),
    (["--admin-port", "8080"], "--admin-port: port 8080 is also --app-port"),
    (["--depends-on", "web"], "--depends-on: a service cannot depend on itself"),
    (["--weight", "0"], "--weight"),
    (["--protocol", "udp"], "--protocol"),
    (["--node-id", " "], "--node-id: must not be empty"),
])
def test_each_problem_names_its_flag(extra, expected):
    found = problems(*extra)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("flag, value", [
    ("--outbound-port", "70000"), ("--admin-port", "0"), ("--status-port", "-1"), ("--drain-seconds", "-1"),
    ("--drain-seconds", "nan"), ("--append-timeout", "inf"), ("--concurrency", "0"), ("--base-id", "-1"),
])
def test_out_of_range_numbers_exit_2_at_parse_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        parse(f"{flag}={value}")
    assert info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_every_problem_is_reported_at_once():
    base = ["run", "--service", "Bad_Name", "--instance-id", "w1", "--app-port", "80", "--inbound-port", "80",
            "--outbound-port", "81", "--gateway", "x", "--bootstrap", "127.0.0.1:9092"]
    found = problems(base=base)
    assert any(p.startswith("--service:") for p in found)
    assert any(p.startswith("--inbound-port: port 80 is also --app-port") for p in found)
    assert any(p.startswith("--gateway:") for p in found)


def test_a_gateway_is_required():
    base = [a for a in BASE if a not in ("--gateway", "127.0.0.1:18000")]
    assert "--gateway: give at least one xds-gateway HOST:PORT" in problems(base=base)


def test_no_broker_address_is_an_argument_problem():
    base = BASE[: BASE.index("--bootstrap")]
    assert any(p.startswith("--bootstrap: no Kafka address") for p in problems(base=base))


def test_the_cli_exits_2_and_starts_nothing(capsys):
    assert cli.main(["run", "--service", "web", "--instance-id", "w1", "--app-port", "1", "--inbound-port", "1",
                     "--outbound-port", "2", "--gateway", "127.0.0.1:1", "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "invalid argument: --inbound-port: port 1 is also --app-port" in err
    assert "nothing was started" in err


# --address auto (docker compose: the container's own address, no shell wrapper)

def _parse_with_host(resolved, *extra: str):
    def resolve_address():
        if isinstance(resolved, Exception):
            raise resolved
        return resolved

    args = build_parser().parse_args([*BASE, "--address", "auto", *extra])
    return options_from_args(args, resolve_bootstrap=_resolve, free_port=lambda: 19901,
                             resolve_address=resolve_address)


def test_address_auto_registers_the_address_the_host_name_resolves_to():
    o = _parse_with_host("172.18.0.5")
    assert o.registration.address == "172.18.0.5"


def test_address_auto_resolving_to_loopback_is_refused_with_the_flag_named():
    with pytest.raises(BadArguments) as info:
        _parse_with_host("127.0.1.1")
    [problem] = info.value.problems
    assert problem.startswith("--address: auto:") and "127.0.1.1" in problem and "loopback" in problem
    assert "--address IP" in problem


@pytest.mark.parametrize("resolved, expected", [
    (OSError("cannot resolve this host's name 'h': [Errno -2] Name or service not known"), "cannot resolve"),
    ("0.0.0.0", "wildcard"),
    ("not-an-ip", "not an IP address"),
])
def test_address_auto_that_cannot_be_used_is_an_argument_problem(resolved, expected):
    with pytest.raises(BadArguments) as info:
        _parse_with_host(resolved)
    assert any(p.startswith("--address: auto:") and expected in p for p in info.value.problems), info.value.problems


def test_address_auto_problems_are_reported_with_the_others():
    with pytest.raises(BadArguments) as info:
        _parse_with_host("127.0.0.1", "--label", "oops")
    found = info.value.problems
    assert any(p.startswith("--address: auto:") for p in found)
    assert any(p.startswith("--label:") for p in found)


def test_address_auto_without_a_resolver_is_refused_not_guessed():
    args = build_parser().parse_args([*BASE, "--address", "auto"])
    with pytest.raises(BadArguments) as info:
        options_from_args(args, resolve_bootstrap=_resolve, free_port=lambda: 19901)
    assert any(p.startswith("--address:") and "auto" in p for p in info.value.problems)


def test_the_cli_resolves_address_auto_from_the_host_name(monkeypatch):
    monkeypatch.setattr(cli.socket, "gethostname", lambda: "reviews-v1")
    monkeypatch.setattr(cli.socket, "gethostbyname", lambda name: {"reviews-v1": "172.18.0.7"}[name])
    assert cli._host_address() == "172.18.0.7"

    def unknown(name):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(cli.socket, "gethostbyname", unknown)
    with pytest.raises(OSError, match="'reviews-v1'"):
        cli._host_address()


def test_the_cli_exits_2_when_address_auto_is_loopback(monkeypatch, capsys):
    monkeypatch.setattr(cli.socket, "gethostbyname", lambda name: "127.0.1.1")
    assert cli.main([*BASE, "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "invalid argument: --address: auto:" in err and "loopback" in err
    assert "nothing was started" in err


def test_address_auto_is_documented_in_help():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "'auto': the IPv4 address this host's name resolves to" in text


# mTLS to the gateways

PLAIN = [a for a in BASE if a != "--insecure"]


def test_tls_files_or_insecure_are_required():
    found = problems(base=PLAIN)
    assert any(p.startswith("--tls-cert, --tls-key, --tls-ca missing") for p in found), found
    assert parse().tls is None  # --insecure


def test_insecure_and_tls_files_contradict():
    assert any("contradict" in p for p in problems("--tls-ca", "/x"))


def _identity(tmp_path, service, instance):
    from identity import spiffe
    from tests.support.trust import MeshCA

    ca = MeshCA("mesh.test", tmp_path / "ca")
    return ca.issue(spiffe.sidecar("mesh.test", service, instance), f"{service}-{instance}")


def test_a_certificate_naming_this_sidecar_is_taken(tmp_path):
    ident = _identity(tmp_path, "web", "w1")
    opts = parse("--tls-cert", str(ident.cert), "--tls-key", str(ident.key), "--tls-ca", str(ident.ca), base=PLAIN)
    assert opts.tls is not None and opts.tls.cert == ident.cert


def test_a_certificate_of_another_instance_is_an_argument_problem(tmp_path):
    ident = _identity(tmp_path, "web", "w2")
    found = problems("--tls-cert", str(ident.cert), "--tls-key", str(ident.key), "--tls-ca", str(ident.ca), base=PLAIN)
    assert any(p.startswith("--tls-cert: the certificate is for spiffe://mesh.test/sidecar/web/w2") for p in found)


def test_a_key_that_is_not_the_certificates_is_an_argument_problem(tmp_path):
    a, b = _identity(tmp_path, "web", "w1"), _identity(tmp_path / "b", "web", "w1")
    found = problems("--tls-cert", str(a.cert), "--tls-key", str(b.key), "--tls-ca", str(a.ca), base=PLAIN)
    assert any(p.startswith("--tls-key ") and "is not the key of" in p for p in found), found


def test_tls_files_come_from_the_environment_too(tmp_path, monkeypatch):
    ident = _identity(tmp_path, "web", "w1")
    monkeypatch.setenv("MESHLOG_SIDECAR_TLS_CERT", str(ident.cert))
    monkeypatch.setenv("MESHLOG_SIDECAR_TLS_KEY", str(ident.key))
    monkeypatch.setenv("MESHLOG_SIDECAR_TLS_CA", str(ident.ca))
    assert parse(base=PLAIN).tls is not None


# --ca-url: the agent renews its certificate at `meshlog ca serve` (proxy.renewal)

def _tls_flags(ident) -> tuple[str, ...]:
    return ("--tls-cert", str(ident.cert), "--tls-key", str(ident.key), "--tls-ca", str(ident.ca))


def test_a_ca_url_with_the_tls_files_is_taken(tmp_path):
    ident = _identity(tmp_path, "web", "w1")
    assert parse(*_tls_flags(ident), base=PLAIN).ca_url is None  # default: renewed by someone else
    opts = parse(*_tls_flags(ident), "--ca-url", "https://127.0.0.1:8443", base=PLAIN)
    assert opts.ca_url == "https://127.0.0.1:8443"


def test_the_ca_url_comes_from_the_environment_too(tmp_path, monkeypatch):
    ident = _identity(tmp_path, "web", "w1")
    monkeypatch.setenv("MESHLOG_SIDECAR_CA_URL", "https://ca.mesh:8443")
    assert parse(*_tls_flags(ident), base=PLAIN).ca_url == "https://ca.mesh:8443"


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8443", "is not an https:// URL"),
    ("127.0.0.1:8443", "is not an https:// URL"),
    ("https://", "names no host"),
    ("https://h:99999", "out of range"),
    ("https://h:8443/ x", "spaces or control characters"),
    ("https://h:8443/?a=1", "no user, query or fragment"),
])
def test_a_bad_ca_url_is_an_argument_problem_naming_the_flag(tmp_path, url, expected):
    ident = _identity(tmp_path, "web", "w1")
    found = problems(*_tls_flags(ident), "--ca-url", url, base=PLAIN)
    assert any(p.startswith("--ca-url: ") and expected in p for p in found), found


def test_a_ca_url_without_certificate_files_is_refused():
    found = problems("--ca-url", "https://127.0.0.1:8443")  # BASE is --insecure
    assert any(p.startswith("--ca-url and --insecure contradict") for p in found), found


def test_the_cli_exits_2_for_a_bad_ca_url(tmp_path, capsys):
    ident = _identity(tmp_path, "web", "w1")
    argv = [*PLAIN, *_tls_flags(ident), "--ca-url", "http://127.0.0.1:8443"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "invalid argument: --ca-url: 'http://127.0.0.1:8443' is not an https:// URL" in err
    assert "nothing was started" in err
