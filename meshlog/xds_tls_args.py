"""The flags of an xDS server's TLS (``xds-gateway run``, ``replay serve``): one definition for both.

``--tls-cert``/``--tls-key``/``--tls-ca`` (or ``$MESHLOG_XDS_TLS_CERT``,
``_KEY``, ``_CA``) or an explicit ``--insecure`` (plaintext, loopback
development). Kept free of heavy imports: a CLI builds its parser with it
before it knows whether it will serve at all.

Invariant: exactly one of the two is given; anything else is a
``TlsFilesError`` naming the flags (the CLIs exit 2 with it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlog.xds_trust import TlsFiles

__all__ = ["add_tls_arguments", "files_from_args"]


def add_tls_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    tls = parser.add_argument_group("mTLS (required unless --insecure)")
    tls.add_argument("--tls-cert", default=os.environ.get("MESHLOG_XDS_TLS_CERT"),
                     help=f"{whose} certificate, PEM, with its SPIFFE id ($MESHLOG_XDS_TLS_CERT)")
    tls.add_argument("--tls-key", default=os.environ.get("MESHLOG_XDS_TLS_KEY"),
                     help="its private key, PEM ($MESHLOG_XDS_TLS_KEY)")
    tls.add_argument("--tls-ca", default=os.environ.get("MESHLOG_XDS_TLS_CA"),
                     help="the mesh root: client certificates must chain to it ($MESHLOG_XDS_TLS_CA)")
    tls.add_argument("--insecure", action="store_true",
                     help="plaintext gRPC, no client identity, every node served to anyone: loopback development only")


def files_from_args(args: argparse.Namespace) -> "TlsFiles | None":
    """The server's TLS files from :func:`add_tls_arguments`'s flags; None with ``--insecure``."""
    from meshlog.xds_trust import TlsFiles, TlsFilesError

    given = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    if args.insecure:
        if any(given.values()):
            raise TlsFilesError("--insecure and --tls-* contradict each other: give one or the other")
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise TlsFilesError(f"{', '.join(missing)} missing: xDS is served over mTLS (flags or $MESHLOG_XDS_TLS_CERT, "
                            "_KEY, _CA); --insecure serves plaintext for loopback development")
    return TlsFiles(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca))
