"""The umbrella ``meshlog`` command.

To add a subcommand, write a module with ``add_parser(subparsers)`` that
registers its parser and sets ``func`` (``args -> int exit code``) as a
default, then list the module in ``SUBCOMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from events import kafka_security

# Modules exposing add_parser(subparsers); each parser sets defaults(func=...).
SUBCOMMAND_MODULES: list[str] = [
    "meshlog.kafka_cli",
    "meshlog.topics_cli",
    "meshlog.ca_cli",
    "meshlog.demo",
    "meshlog.demo_app",
    "proxysync.status_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlog",
        description="meshlog: an event-sourced service-mesh control plane (developer tools).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real import error inside the module: surface it
                raise
            print(f"meshlog: warning: subcommand module {name} not found; skipped", file=sys.stderr)
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "meshlog")  # flags where a subcommand has them, else $MESHLOG_KAFKA_*
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
