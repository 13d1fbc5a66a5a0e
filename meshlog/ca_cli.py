"""``meshlog ca``: the mesh CA (init, token, issue, serve, revoke; join and renew as a client).

Exit codes: 0 done; 2 refused or bad input (the reason is on stderr, nothing
written); 3 broker unreachable. The CA directory is ``--dir`` (default
``$MESHLOG_CA_DIR``); it holds ``ca.pem``, ``ca-key.pem`` (0600) and ``domain``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from events import kafka_security
from events.admin import BrokerUnavailable
from events.envelope import default_producer_identity, new_event
from meshlog import argtypes
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap

EXIT_OK, EXIT_REFUSED, EXIT_BROKER = 0, 2, 3
CA_DIR_ENV = "MESHLOG_CA_DIR"
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Refusal(Exception):
    """A CLI-level refusal: printed as ``meshlog ca: <message>``, exit 2."""


def duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a duration like 30s, 10m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _ca_dir(args: argparse.Namespace) -> Path:
    value = args.dir or os.environ.get(CA_DIR_ENV)
    if not value:
        raise Refusal(f"no CA directory: pass --dir DIR or set ${CA_DIR_ENV}")
    return Path(value)


def _load_ca(args: argparse.Namespace):
    from identity import pki

    directory = _ca_dir(args)
    try:
        return pki.load_ca(directory)
    except FileNotFoundError as exc:
        raise Refusal(f"no CA in {directory}: {exc.filename} is missing (run `meshlog ca init`)") from None
    except pki.PkiError as exc:
        raise Refusal(f"the CA in {directory} is unusable: {exc}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ca = subparsers.add_parser("ca", help="the mesh CA: identities (SPIFFE ids in X.509 certificates)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", help=f"the CA directory (default ${CA_DIR_ENV})")
        return p

    def with_bootstrap(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
        kafka_security.add_arguments(p)
        return p

    init = with_dir(actions.add_parser("init", help="create a trust domain's root (ECDSA P-256) in --dir"))
    init.add_argument("--domain", required=True, help="the trust domain, e.g. mesh.local")
    init.add_argument("--if-missing", action="store_true",
                      help="keep a CA of this domain already in --dir and exit 0 (a deployment's one-shot init job "
                      "that runs at every start); a CA of another domain is still refused")
    init.set_defaults(func=lambda a: _run(cmd_init, a))

    token = with_dir(actions.add_parser("token", help="print a one-time join token bound to a service"))
    token.add_argument("--service", required=True)
    token.add_argument("--ttl", type=duration, default=timedelta(minutes=10), help="lifetime (default 10m, max 24h)")
    token.set_defaults(func=lambda a: _run(cmd_token, a))

    issue = with_bootstrap(with_dir(actions.add_parser(
        "issue", help="issue a certificate offline: writes cert.pem, key.pem (0600), ca.pem into --out")))
    issue.add_argument("--role", required=True, help="sidecar, gateway, projector, checker, operator, broker, ...")
    issue.add_argument("--name", help="the role's name: <service>/<instance>, <replica>, <name> or <user>")
    issue.add_argument("--out", required=True, help="directory to write the identity into")
    issue.add_argument("--lifetime", type=duration, default=timedelta(hours=24), help="default 24h")
    issue.add_argument("--server-name", action="append", default=[], metavar="NAME",
                       help="add a DNS or IP SAN (repeatable), for a certificate that also serves TLS")
    issue.add_argument("--no-log", action="store_true",
                       help="do not append IdentityIssued (only for what must exist before the log, e.g. the broker)")
    issue.set_defaults(func=lambda a: _run(cmd_issue, a))

    serve = with_bootstrap(with_dir(actions.add_parser("serve", help="serve joins and renewals over HTTPS")))
    serve.add_argument("--listen", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=argtypes.port_or_free, default=8443, help="port (default 8443; 0 = any free port)")
    serve.add_argument("--replica", default="ca-0", help="this replica's name (its TLS identity ca-server/<replica>)")
    serve.add_argument("--lifetime", type=duration, default=timedelta(hours=24), help="certificate lifetime (24h)")
    serve.add_argument("--ready-file", type=Path, help="write the bound port here once serving")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(func=lambda a: _run(cmd_serve, a))

    revoke = with_bootstrap(with_dir(actions.add_parser(
        "revoke", help="revoke a certificate by serial (hex); the root signs the revocation (--dir)")))
    revoke.add_argument("serial")
    revoke.add_argument("--reason", default="revoked by operator")
    revoke.set_defaults(func=lambda a: _run(cmd_revoke, a))

    join = actions.add_parser("join", help="get a sidecar certificate from `ca serve` with a join token")
    join.add_argument("--url", required=True, help="the CA endpoint, e.g. https://127.0.0.1:8443")
    join.add_argument("--token", required=True)
    join.add_argument("--service", required=True)
    join.add_argument("--instance", required=True)
    join.add_argument("--bundle", required=True, type=Path, help="the trust domain's ca.pem")
    join.add_argument("--out", required=True, type=Path)
    join.set_defaults(func=lambda a: _run(cmd_join, a))

    renew = actions.add_parser("renew", help="renew the certificate in --out over mTLS (new key)")
    renew.add_argument("--url", required=True)
    renew.add_argument("--out", required=True, type=Path, help="the identity directory (cert.pem, key.pem, ca.pem)")
    renew.set_defaults(func=lambda a: _run(cmd_renew, a))
    return ca


def _run(command, args: argparse.Namespace) -> int:
    from identity.client import CaRefused
    from identity.log import LogUnavailable
    from identity.pki import PkiError
    from identity.spiffe import SpiffeIdError

    try:
        return command(args)
    except (Refusal, SpiffeIdError, PkiError, CaRefused, FileExistsError, ValueError) as exc:
        print(f"meshlog ca: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (NoBrokerAddress, BrokerUnavailable, LogUnavailable) as exc:
        print(f"meshlog ca: {exc}", file=sys.stderr)
        return EXIT_BROKER


def _now() -> datetime:
    return datetime.now(timezone.utc)


def cmd_init(args: argparse.Namespace) -> int:
    from identity import pki, spiffe

    spiffe.validate_domain(args.domain)
    directory = _ca_dir(args)
    if args.if_missing and (directory / pki.CA_KEY_FILE).exists():
        existing = _load_ca(args)
        if existing.domain != args.domain:
            raise Refusal(f"--if-missing: {directory} holds the CA of {existing.domain!r}, not {args.domain!r}")
        print(f"kept trust domain {args.domain}: root serial {pki.serial_hex(existing.certificate)} in {directory}")
        return EXIT_OK
    ca = pki.create_root(args.domain)
    pki.save_ca(ca, directory)
    print(f"created trust domain {args.domain}: root serial {pki.serial_hex(ca.certificate)} in {directory}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from identity import tokens

    print(tokens.mint(_load_ca(args), args.service, now=_now(), ttl=args.ttl))
    return EXIT_OK


async def _append(bootstrap: str, payload, ca) -> None:
    """Append identity event ``payload`` signed by ``ca``'s root key (identity facts are the root's)."""
    from events.producer import EventProducer
    from identity.records import authority_signer

    async with EventProducer(bootstrap) as producer:
        await producer.append(authority_signer(ca).sign(new_event(payload)))


def cmd_issue(args: argparse.Namespace) -> int:
    from identity import pki, records, spiffe

    ca = _load_ca(args)
    ident = spiffe.from_role(ca.domain, args.role, args.name)
    key = pki.generate_key()
    cert = pki.issue(ca, ident, key.public_key(), now=_now(), lifetime=args.lifetime,
                     server_names=tuple(args.server_name))
    if not args.no_log:
        # logged before the files exist: an identity in use is always one the log knows
        event = records.issued(cert, ca.certificate, how="offline", requested_by=default_producer_identity())
        asyncio.run(_append(resolve_bootstrap(args.bootstrap), event, ca))
    files = pki.save_identity(args.out, cert, key, ca.certificate)
    if ident.role == "broker":  # Kafka's ssl.keystore.type=PEM reads its key and certificate from one file
        from meshlog.kafka_tls import KEYSTORE_FILE

        pki.write_file_atomic(Path(args.out) / KEYSTORE_FILE, pki.keystore_pem(cert, key), 0o600)
    print(f"issued {ident.uri} serial {pki.serial_hex(cert)} until {cert.not_valid_after_utc.isoformat()}: "
          f"{files.cert}, {files.key}" + (" (not logged)" if args.no_log else ""))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from identity.serve import ServeOptions, serve

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    _load_ca(args)  # a missing or broken CA is a usage error before anything starts
    options = ServeOptions(ca_dir=_ca_dir(args), bootstrap=resolve_bootstrap(args.bootstrap), listen=args.listen,
                           port=args.port, replica=args.replica, lifetime=args.lifetime, ready_file=args.ready_file)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop=stop)

    asyncio.run(main())
    return EXIT_OK


async def revoke(bootstrap: str, serial_text: str, reason: str, revoked_by: str, ca) -> str:
    """Append ``IdentityRevoked`` for a serial the log shows issued and not revoked; returns its SPIFFE id."""
    from identity import pki, records
    from identity.log import IdentityLog

    serial = pki.serial_hex(pki.parse_serial(serial_text))
    async with IdentityLog(bootstrap) as identities:
        registry = await identities.sync()
    cert = registry.certificates.get(serial)
    if cert is None:
        raise Refusal(f"no certificate with serial {serial} was ever recorded as issued")
    previous = registry.revocation(serial)
    if previous is not None:
        raise Refusal(f"certificate {serial} of {cert.spiffe_id} is already revoked ({previous.reason[:80]!r})")
    await _append(bootstrap, records.revoked(cert.spiffe_id, serial, reason=reason, revoked_by=revoked_by), ca)
    return cert.spiffe_id


def cmd_revoke(args: argparse.Namespace) -> int:
    ca = _load_ca(args)  # the root signs the revocation, as it signed the issuance
    spiffe_id = asyncio.run(revoke(resolve_bootstrap(args.bootstrap), args.serial, args.reason,
                                   default_producer_identity(), ca))
    print(f"revoked {spiffe_id} serial {args.serial}")
    return EXIT_OK


def _print_granted(granted, files) -> None:
    from identity import pki

    print(orjson.dumps({"spiffe_id": pki.spiffe_id_of(granted.cert).uri, "serial": pki.serial_hex(granted.cert),
                        "not_after": granted.cert.not_valid_after_utc.isoformat(),
                        "renew_after": pki.renewal_due(granted.cert).isoformat(), "cert": str(files.cert)}).decode())


def cmd_join(args: argparse.Namespace) -> int:
    from identity import client, pki

    root = pki.load_bundle(args.bundle)
    granted = asyncio.run(client.join(args.url, token=args.token, service=args.service, instance=args.instance,
                                      root=root))
    _print_granted(granted, pki.save_identity(args.out, granted.cert, granted.key, granted.root))
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    from identity import client, pki

    files = pki.IdentityFiles.in_dir(args.out)
    granted = asyncio.run(client.renew(args.url, files))
    _print_granted(granted, pki.save_identity(args.out, granted.cert, granted.key, granted.root))
    return EXIT_OK
