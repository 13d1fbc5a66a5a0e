"""The ``replay`` console script: ``replay.cli.main`` behind the garbage-collector policy of a short process.

Invariants:
- The output is ``replay.cli.main``'s, exit code included: this module only
  decides when Python's cyclic garbage collector runs.
- While the CLI's modules are imported the collector is off, and what they
  built (hundreds of thousands of objects that live as long as the process:
  classes, protobuf descriptors, pydantic validators) is then frozen
  (``gc.freeze``): no later collection walks it again. Importing creates no
  cyclic garbage worth finding; the collections it triggered were an eighth
  of a ``replay at``'s CPU (measured: 104 collections, ~0.1 CPU-s).
- ``replay at`` (``ONE_SHOT``) runs with the collector off to its end: it is
  one rebuild and one render whose big phases already run without it
  (``replay.engine.no_gc``), then the process exits; the collections between
  those phases walked the folded state again and again (53 more, ~0.1 CPU-s).
  Every other command (``diff``/``log`` walks render at every step and make
  cyclic garbage; ``serve`` and ``ui`` run for hours) gets the collector back
  on, as before.
"""

from __future__ import annotations

import gc
import importlib
import sys

ONE_SHOT = frozenset({"at"})
# the module whose parser and main this script runs (imported only inside main(), after gc.disable());
# tools that check the console scripts' arguments (tests/unit/test_compose.py) parse with it
CLI_MODULE = "replay.cli"


def main() -> int:
    gc.disable()
    cli = importlib.import_module(CLI_MODULE)

    gc.freeze()
    argv = sys.argv[1:]
    if cli.command_of(argv) not in ONE_SHOT:
        gc.enable()
    return cli.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
