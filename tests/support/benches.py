"""Load a bench script (``bench/<name>.py``) as a module, for unit tests of its pure parts.

bench/ is a directory of scripts, not a package: a script is loaded by path and registered in
``sys.modules`` under its own name (so its dataclasses and pickling work as in a normal import).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str, registered_as: str | None = None):
    """``bench/<name>.py`` as a module, in ``sys.modules`` as ``registered_as`` (default: ``name``; give another
    where the script's name is a package's, e.g. ``bench/replay.py`` and ``replay``)."""
    registered_as = registered_as or name
    spec = importlib.util.spec_from_file_location(registered_as, BENCH / f"{name}.py")
    module = sys.modules[registered_as] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
