"""Load a bench script (``bench/<name>.py``) as a module, for unit tests of its pure parts.

bench/ is a directory of scripts, not a package: a script is loaded by path and registered in
``sys.modules`` under its own name (so its dataclasses and pickling work as in a normal import).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str):
    """``bench/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
