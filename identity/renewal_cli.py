"""``--ca-url`` for the control-plane roles: which files a process renews, and running its renewers beside it.

``projector run``, ``xds-gateway run`` and ``registrar healthcheck`` take
``--ca-url`` (or ``$MESHLOG_CA_URL``) and renew their own certificates at
``meshlog ca serve`` with ``identity.renewal``'s one loop (the sidecar has
its own flag over its ``--tls-*`` files, ``proxy.renewal``). Kept apart from
``identity.renewal`` so that parsing the flag costs a CLI no import of the
HTTP client or the X.509 code unless renewal is asked for.

Invariants:
- A process renews each certificate file it uses, once: its xDS ``--tls-*``
  files if it has them, and its Kafka client certificate
  (``events.kafka_security``) if that is another file.
- ``--ca-url`` with nothing to renew, or not an ``https://`` URL, is a usage
  error naming the flag (exit 2) before anything starts.
- Renewers stop with the process's main coroutine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Mapping

if TYPE_CHECKING:
    from identity.pki import IdentityFiles
    from identity.renewal import CertificateRenewer

CA_URL_ENV = "MESHLOG_CA_URL"

__all__ = ["CA_URL_ENV", "RenewalUsageError", "add_arguments", "renewers_from_args", "renewers_or_exit", "running"]


class RenewalUsageError(ValueError):
    """``--ca-url`` that cannot work; the message names the flag and the problem (CLIs exit 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-url", metavar="https://HOST:PORT", default=None,
                        help=f"`meshlog ca serve`: renew this process's certificate there by itself at 2/3 of its "
                             f"life (mTLS with the current one, a new key; ${CA_URL_ENV}); the renewed files are "
                             "picked up at the next handshake. Default: renewed by someone else")


def renewers_from_args(args: argparse.Namespace, role: str, tls_files: "IdentityFiles | None" = None,
                       environ: Mapping[str, str] | None = None) -> "list[CertificateRenewer]":
    """The renewers ``--ca-url`` asks for, one per certificate file of the process (see the invariants).
    Empty without ``--ca-url``."""
    from events import kafka_security
    from meshlog.argtypes import https_url_problem

    env = os.environ if environ is None else environ
    url = (getattr(args, "ca_url", None) or env.get(CA_URL_ENV) or "").strip()
    if not url:
        return []
    problem = https_url_problem(url)
    if problem:
        raise RenewalUsageError(f"--ca-url / ${CA_URL_ENV}: {problem}")
    from identity import pki
    from identity.renewal import CertificateRenewer

    found = [tls_files] if tls_files is not None else []
    security = kafka_security.current()
    if security.cert_file and security.key_file and security.ca_file:
        found.append(pki.IdentityFiles(cert=Path(security.cert_file), key=Path(security.key_file),
                                       bundle=Path(security.ca_file)))
    distinct = list({f.cert.resolve(): f for f in found}.values())
    if not distinct:
        raise RenewalUsageError(f"--ca-url / ${CA_URL_ENV}: this {role} has no certificate to renew (give "
                                "--kafka-cert-file, --kafka-key-file and --kafka-ca-file, or their variables)")
    import logging

    logger = logging.getLogger(f"{role}.renewal")
    return [CertificateRenewer(url, f, logger=logger, what=f"{role} certificate {f.cert}") for f in distinct]


def renewers_or_exit(args: argparse.Namespace, role: str, prog: str,
                     tls_files: "IdentityFiles | None" = None) -> "list[CertificateRenewer]":
    """:func:`renewers_from_args` for a CLI's ``main``: a bad ``--ca-url`` prints the reason and exits 2."""
    try:
        return renewers_from_args(args, role, tls_files)
    except RenewalUsageError as exc:
        print(f"{prog}: invalid input: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def running(renewers: "list[CertificateRenewer]", main: Awaitable):
    """Await ``main`` (the process's own coroutine) with the renewers running beside it; they stop with it."""
    tasks = [asyncio.create_task(r.run(), name=f"renewal:{r.files.cert}") for r in renewers]
    try:
        return await main
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
