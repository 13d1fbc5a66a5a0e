"""``meshlog-sidecar run`` arguments: parsing and validation (pure; no I/O beyond picking a free port
and reading the TLS files it checks).

Invariants:
- ``options_from_args`` either returns complete, consistent ``SidecarOptions``
  (including the validated ``InstanceRegistered`` payload the agent will
  append) or raises ``BadArguments`` listing every problem, each naming the
  flag to fix. Nothing is started for invalid arguments.
- The registration publishes ``port`` = the app's port and ``sidecar`` =
  {inbound, outbound}: the projector sends other nodes the sidecar's inbound
  port as this instance's endpoint, and this node's ``<node>~local`` cluster
  points at 127.0.0.1:<app port>.
- Every port this sidecar owns (app, inbound, outbound, admin, status,
  subscription API) is distinct.
- ``--address auto`` is replaced by the IPv4 address this host's name
  resolves to (asked of the injected ``resolve_address``, so this module stays
  pure); a loopback or unresolvable answer is a ``--address`` problem, since
  other sidecars could not reach the instance there.
- mTLS to the gateways unless ``--insecure``: the certificate must be a
  usable pair with its key and name exactly this sidecar
  (``spiffe://<domain>/sidecar/<service>/<instance-id>``), or the gateways
  would refuse every stream; that is reported here, before anything starts.
  Its trust domain goes into the registration (``sidecar.trust_domain``):
  the sidecar-to-sidecar data plane is mTLS too (``projector.mesh_tls``).
- ``--ca-url`` (``$MESHLOG_SIDECAR_CA_URL``) is an ``https://`` URL and needs
  those files (not ``--insecure``): the agent renews them there.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from events import kafka_security
from events.codec import validate_payload
from events.errors import EventValidationError
from events.types import InstanceRegistered
from meshlog import argtypes
from meshlog.bootstrap import BadBrokerAddress
from proxy.sds import SidecarTls, TlsProblem, load_tls

# payload field -> flag, so a validation message names what the user typed
FLAG_OF_FIELD = {
    "service": "--service",
    "instance_id": "--instance-id",
    "address": "--address",
    "port": "--app-port",
    "protocol": "--protocol",
    "labels": "--label",
    "weight": "--weight",
    "node_id": "--node-id",
    "sidecar": "--inbound-port/--outbound-port",
    "sidecar.inbound_port": "--inbound-port",
    "sidecar.outbound_port": "--outbound-port",
    "depends_on": "--depends-on",
}

MAX_DRAIN_SECONDS = 3600.0
AUTO_ADDRESS = "auto"


class BadArguments(ValueError):
    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class SidecarOptions:
    registration: InstanceRegistered
    gateways: tuple[str, ...]
    bootstrap: str
    node_id: str
    node_cluster: str
    admin_port: int
    base_id: int
    cache_dir: Path
    status_file: Path
    status_port: int | None
    drain_seconds: float
    append_timeout: float = 5.0
    envoy_log_level: str = "warning"
    concurrency: int = 1
    hot_restart: bool = True
    locality_zone: str | None = None
    tls: SidecarTls | None = None  # None: plaintext to the gateways (--insecure)
    api_port: int | None = None  # the local subscription API (proxy.subscriptions), 127.0.0.1 only
    ca_url: str | None = None  # `meshlog ca serve`: the agent renews its certificate there (proxy.renewal)
    subscribe_timeout: float = 10.0

    @property
    def service(self) -> str:
        return self.registration.service

    @property
    def instance_id(self) -> str:
        return self.registration.instance_id

    @property
    def app_port(self) -> int:
        return self.registration.port

    @property
    def inbound_port(self) -> int:
        return self.registration.sidecar.inbound_port

    @property
    def outbound_port(self) -> int:
        return self.registration.sidecar.outbound_port

    @property
    def workdir(self) -> Path:
        return self.cache_dir / "run"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlog-sidecar",
        description="The meshlog sidecar agent: runs and supervises Envoy for one app instance, registers the "
        "instance, and keeps the last configuration Envoy accepted on disk to serve from when no gateway answers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the sidecar in the foreground (SIGTERM drains it)",
                         epilog="Exit codes: 0 drained and stopped; 2 invalid arguments; 1 could not start.")
    run.add_argument("--service", required=True, help="the app's service name, e.g. reviews")
    run.add_argument("--instance-id", required=True, help="this instance's id within the service")
    run.add_argument("--address", default="127.0.0.1", metavar="IP|auto",
                     help="the IP other sidecars reach this instance at; the inbound listener binds it (default "
                     "127.0.0.1). 'auto': the IPv4 address this host's name resolves to (in a container: the "
                     "container's address on its network); refused if that is a loopback address")
    run.add_argument("--app-port", type=argtypes.port, required=True, help="the port the app listens on (on 127.0.0.1)")
    run.add_argument("--inbound-port", type=argtypes.port, required=True, help="the sidecar's inbound port (traffic to the app)")
    run.add_argument("--outbound-port", type=argtypes.port, required=True,
                     help="the sidecar's outbound port on 127.0.0.1: the app calls it with Host: <service>")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                     help="instance label such as version=v2 or zone=a (repeatable)")
    run.add_argument("--depends-on", action="append", default=[], metavar="SERVICE",
                     help="a service the app calls (repeatable)")
    run.add_argument("--weight", type=int, default=1, help="load-balancing weight 1-128 (default 1)")
    run.add_argument("--protocol", default="http", help="the app's protocol: http, grpc or tcp (default http)")
    run.add_argument("--gateway", action="append", default=[], metavar="HOST:PORT",
                     help="an xds-gateway replica (repeatable; Envoy fails over between them)")
    run.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka bootstrap HOST:PORT for registration (default: "
                     "$MESHLOG_KAFKA_BOOTSTRAP, else the broker of `meshlog kafka up`)")
    kafka_security.add_arguments(run)
    tls = run.add_argument_group("mTLS to the gateways (required unless --insecure)")
    tls.add_argument("--tls-cert", default=os.environ.get("MESHLOG_SIDECAR_TLS_CERT"),
                     help="workload certificate, PEM, spiffe://<domain>/sidecar/<service>/<instance> "
                          "($MESHLOG_SIDECAR_TLS_CERT); renewed in place, Envoy picks it up over SDS")
    tls.add_argument("--tls-key", default=os.environ.get("MESHLOG_SIDECAR_TLS_KEY"),
                     help="its private key, PEM ($MESHLOG_SIDECAR_TLS_KEY)")
    tls.add_argument("--tls-ca", default=os.environ.get("MESHLOG_SIDECAR_TLS_CA"),
                     help="the mesh root; gateways must present spiffe://<domain>/gateway/... "
                          "($MESHLOG_SIDECAR_TLS_CA)")
    tls.add_argument("--ca-url", default=os.environ.get("MESHLOG_SIDECAR_CA_URL"), metavar="https://HOST:PORT",
                     help="`meshlog ca serve`: renew the --tls-cert there by itself at 2/3 of its life (mTLS with "
                          "the current certificate, a new key), retried with backoff ($MESHLOG_SIDECAR_CA_URL; "
                          "default: renewed by someone else)")
    tls.add_argument("--insecure", action="store_true",
                     help="plaintext xDS to the gateways: loopback development only")
    run.add_argument("--node-id", help="xDS node id (default <service>-<instance-id>)")
    run.add_argument("--node-cluster", help="xDS node cluster (default the service name)")
    run.add_argument("--admin-port", type=argtypes.port, help="Envoy admin port on 127.0.0.1 (default: a free port)")
    run.add_argument("--base-id", type=argtypes.integer(0, 400_000_000), help="Envoy --base-id (default: the admin port, unique per host)")
    run.add_argument("--cache-dir", help="where the last accepted configuration, the status file and Envoy's "
                     "files live (default ~/.meshlog/sidecar/<node-id>)")
    run.add_argument("--status-file", help="status JSON, rewritten on every change (default <cache-dir>/status.json)")
    run.add_argument("--status-port", type=argtypes.port_or_free,
                     help="also serve GET /status (JSON) and /healthz on 127.0.0.1:PORT (0 picks one)")
    run.add_argument("--api-port", type=argtypes.port_or_free,
                     help="serve the local subscription API (PUT/DELETE /v1/subscriptions/NAME, GET "
                     "/v1/subscriptions) on 127.0.0.1:PORT (0 picks one; default: not served)")
    run.add_argument("--subscribe-timeout", type=argtypes.seconds(0.5, 120, low_inclusive=True), default=10.0,
                     help="seconds a subscribe/unsubscribe waits for Envoy to hold the change (default 10)")
    run.add_argument("--drain-seconds", type=argtypes.seconds(0, MAX_DRAIN_SECONDS, low_inclusive=True), default=5.0,
                     help="on SIGTERM, seconds to keep serving after announcing 'draining' (default 5)")
    run.add_argument("--append-timeout", type=argtypes.seconds(0.1, 120, low_inclusive=True), default=5.0,
                     help="seconds each registration/health append may take (default 5)")
    run.add_argument("--envoy-log-level", default="warning", help="Envoy --log-level (default warning)")
    run.add_argument("--concurrency", type=argtypes.integer(1, 64), default=1, help="Envoy worker threads (default 1)")
    run.add_argument("--no-hot-restart", action="store_true",
                     help="switch from cache mode back to ADS with a cold Envoy restart (brief refusal of "
                     "connections) instead of a hot restart")
    status = sub.add_parser("status", help="print a running sidecar's status file")
    _locate_flags(status)
    api_help = ("Talks to the running sidecar's local subscription API (run it with --api-port); the port comes "
                "from --api-port or the sidecar's status file. Exit codes: 0 done (Envoy holds the change); "
                "2 invalid arguments or service name; 1 refused, timed out or no sidecar answered.")
    for name, what in (("subscribe", "subscribe this instance to SERVICE at run time (answers once Envoy holds it)"),
                       ("unsubscribe", "drop a run-time subscription (answers once Envoy no longer serves it)")):
        cmd = sub.add_parser(name, help=what, description=what + ". " + api_help)
        cmd.add_argument("dependency", metavar="SERVICE")
        _locate_flags(cmd, api=True)
    listing = sub.add_parser("subscriptions", help="list what this instance depends on (declared and subscribed)",
                             description=api_help)
    _locate_flags(listing, api=True)
    return parser


def _locate_flags(cmd: argparse.ArgumentParser, *, api: bool = False) -> None:
    """How a command finds a running sidecar: its status file (or the local API's port)."""
    cmd.add_argument("--cache-dir", help="the sidecar's cache dir")
    cmd.add_argument("--status-file", help="or the status file itself")
    cmd.add_argument("--node-id", help="with the default cache dir: the node id")
    if api:
        cmd.add_argument("--api-port", type=argtypes.port, help="the sidecar's --api-port (instead of its status file)")
        cmd.add_argument("--timeout", type=argtypes.seconds(0, 600), default=30.0,
                         help="seconds to wait for the sidecar's answer (default 30)")


def parse_labels(pairs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    labels: dict[str, str] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            problems.append(f"--label: {pair!r} is not KEY=VALUE")
        elif key in labels:
            problems.append(f"--label: {key!r} given twice")
        else:
            labels[key] = value
    return labels, problems


def check_gateway(address: str) -> str | None:
    problem = argtypes.host_port_problem(address)
    return f"--gateway: {problem}" if problem else None


def _flagged(problem: str) -> str:
    for name, flag in sorted(FLAG_OF_FIELD.items(), key=lambda kv: -len(kv[0])):
        if problem.startswith(name + ":"):
            return f"{flag}: {problem[len(name) + 1:].strip()}"
    return problem


def default_cache_dir(node_id: str) -> Path:
    from meshlog.kafka_local import meshlog_home

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node_id)
    return meshlog_home() / "sidecar" / safe


def auto_address(resolve_address: Callable[[], str] | None) -> tuple[str | None, str | None]:
    """(the address ``--address auto`` stands for, or None; the problem, or None)."""
    if resolve_address is None:
        return None, "--address: 'auto' is not available here (no host resolver); give the IP"
    try:
        resolved = resolve_address()
    except Exception as exc:  # noqa: BLE001 - socket.gaierror and friends: reported like any bad flag
        return None, f"--address: auto: {exc}; give the IP explicitly"
    try:
        ip = ipaddress.ip_address(resolved)
    except ValueError:
        return None, f"--address: auto: this host's name resolves to {resolved!r}, not an IP address; give the IP"
    if ip.is_loopback or ip.is_unspecified:
        return None, (f"--address: auto: this host's name resolves to {resolved}, a "
                      f"{'loopback' if ip.is_loopback else 'wildcard'} address other sidecars cannot reach; "
                      "give --address IP explicitly")
    return str(ip), None


def options_from_args(
    args: argparse.Namespace,
    *,
    resolve_bootstrap: Callable[[str | None], str],
    free_port: Callable[[], int],
    resolve_address: Callable[[], str] | None = None,
) -> SidecarOptions:
    """Validate ``run`` arguments completely; raise BadArguments naming every problem.

    ``resolve_address`` (only called for ``--address auto``) returns the IP this host's name resolves to.
    """
    problems: list[str] = []
    address = args.address
    if address == AUTO_ADDRESS:
        address, problem = auto_address(resolve_address)
        if problem:
            problems.append(problem)
            address = "127.0.0.1"  # placeholder: still check every other field; the problem is already named
    labels, label_problems = parse_labels(args.label)
    problems += label_problems
    node_id = args.node_id if args.node_id is not None else f"{args.service}-{args.instance_id}"
    if not node_id.strip():
        problems.append("--node-id: must not be empty")

    if not args.gateway:
        problems.append("--gateway: give at least one xds-gateway HOST:PORT")
    for gw in args.gateway:
        bad = check_gateway(gw)
        if bad:
            problems.append(bad)
    if len(set(args.gateway)) != len(args.gateway):
        problems.append("--gateway: an address is given twice")
    # ports, durations and counts are range-checked by their argparse types (meshlog.argtypes)
    tls, tls_problem = tls_from_args(args)
    if tls_problem:
        problems.append(tls_problem)
    ca_url, ca_url_problem = ca_url_from_args(args)
    if ca_url_problem:
        problems.append(ca_url_problem)

    # a sidecar with a mesh identity says so in its registration: the projector then renders its
    # inbound listener mTLS + RBAC and its callers' clusters mTLS to it (projector.mesh_tls)
    trust_domain = load_tls(tls).identity.domain if tls is not None else None
    registration = None
    ports_ok = all(v is not None and 1 <= v <= 65535 for v in (args.app_port, args.inbound_port, args.outbound_port))
    # with a bad port already reported, still check every other field (placeholder ports, port problems dropped)
    app_port, inbound_port, outbound_port = (
        (args.app_port, args.inbound_port, args.outbound_port) if ports_ok else (1, 2, 3))
    try:
        payload = validate_payload(InstanceRegistered, {
            "service": args.service,
            "instance_id": args.instance_id,
            "address": address,
            "port": app_port,
            "protocol": args.protocol,
            "labels": labels,
            "weight": args.weight,
            "node_id": node_id or None,
            "sidecar": {"inbound_port": inbound_port, "outbound_port": outbound_port, "trust_domain": trust_domain},
            "depends_on": tuple(args.depends_on),
        })
        registration = payload if ports_ok else None
    except EventValidationError as exc:
        port_fields = ("port", "sidecar")
        problems += [_flagged(str(p)) for p in exc.problems
                     if ports_ok or not p.field.startswith(port_fields)]

    admin_port = args.admin_port
    owned = {"--app-port": args.app_port, "--inbound-port": args.inbound_port, "--outbound-port": args.outbound_port}
    if admin_port is not None:
        owned["--admin-port"] = admin_port
    if args.status_port:
        owned["--status-port"] = args.status_port
    if args.api_port:
        owned["--api-port"] = args.api_port
    seen: dict[int, str] = {}
    for flag, port in owned.items():
        if port in seen:
            problems.append(f"{flag}: port {port} is also {seen[port]}")
        else:
            seen[port] = flag

    bootstrap = ""
    try:
        bootstrap = resolve_bootstrap(args.bootstrap)  # (--bootstrap itself was checked by its argparse type)
    except BadBrokerAddress as exc:  # names where the address came from ($MESHLOG_KAFKA_BOOTSTRAP)
        problems.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - NoBrokerAddress and friends: reported like any bad flag
        problems.append(f"--bootstrap: {exc}")

    if problems:
        raise BadArguments(problems)
    assert registration is not None
    if admin_port is None:
        while True:
            admin_port = free_port()
            if admin_port not in seen:
                break
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(node_id)
    return SidecarOptions(
        registration=registration,
        gateways=tuple(args.gateway),
        bootstrap=bootstrap,
        node_id=node_id,
        node_cluster=args.node_cluster or args.service,
        admin_port=admin_port,
        base_id=args.base_id if args.base_id is not None else admin_port,
        cache_dir=cache_dir,
        status_file=Path(args.status_file).expanduser() if args.status_file else cache_dir / "status.json",
        status_port=args.status_port,
        drain_seconds=float(args.drain_seconds),
        append_timeout=float(args.append_timeout),
        envoy_log_level=args.envoy_log_level,
        concurrency=args.concurrency,
        hot_restart=not args.no_hot_restart,
        locality_zone=labels.get("zone"),
        tls=tls,
        api_port=args.api_port,
        subscribe_timeout=float(args.subscribe_timeout),
        ca_url=ca_url,
    )


def ca_url_from_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``--ca-url`` (or ``$MESHLOG_SIDECAR_CA_URL``), checked; it needs the certificate files it renews."""
    url = (getattr(args, "ca_url", None) or "").strip()
    if not url:
        return None, None
    problem = argtypes.https_url_problem(url)
    if problem:
        return None, f"--ca-url: {problem}"
    if args.insecure:
        return None, "--ca-url and --insecure contradict each other: the CA renews a --tls-cert"
    return url, None


def tls_from_args(args: argparse.Namespace) -> tuple[SidecarTls | None, str | None]:
    """The sidecar's TLS files, checked (a usable pair naming this very instance), or the problem."""
    given = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    if args.insecure:
        if any(given.values()):
            return None, "--insecure and --tls-* contradict each other: give one or the other"
        return None, None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        return None, (f"{', '.join(missing)} missing: the sidecar dials the gateways over mTLS (flags or "
                      "$MESHLOG_SIDECAR_TLS_CERT, _KEY, _CA); --insecure dials plaintext for loopback development")
    tls = SidecarTls(Path(args.tls_cert).expanduser(), Path(args.tls_key).expanduser(), Path(args.tls_ca).expanduser())
    try:
        ident = load_tls(tls).identity
    except TlsProblem as exc:
        return None, str(exc)
    if ident.role != "sidecar" or ident.segments != (args.service, args.instance_id):
        return None, (f"--tls-cert: the certificate is for {ident.uri}, but this sidecar is --service "
                      f"{args.service!r} --instance-id {args.instance_id!r} (the gateways would refuse it)")
    return tls, None
