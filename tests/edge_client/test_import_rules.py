"""Import rules: what edge_client imports (never TensorFlow), and what others import from it.

Packages follow runtime roles and import one way (docs/architecture.md): ``edge_client`` at
the ground, ``model_export`` and ``devices`` above it, ``coordinator`` on top. The other
packages use ``edge_client`` only through its shared contract, ``edge_client.SHARED_MODULES``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import edge_client
from tests.conftest import ROOT

FORBIDDEN = ("tensorflow", "keras", "coordinator", "model_export", "tests")
PACKAGES = ("edge_client", "coordinator", "devices", "model_export")
# Code outside edge_client that must keep to the shared contract (bench runs the product too).
USERS = ("coordinator", "devices", "model_export", "bench")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _imported(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every absolute import in ``path`` (name None for ``import m``)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


def contract_violations(path: Path) -> list[str]:
    """Imports in ``path`` (outside edge_client) that reach past edge_client's shared contract."""
    problems = []
    for line, module, name in _imported(path):
        if module != "edge_client" and not module.startswith("edge_client."):
            continue
        where = _where(path, line)
        if module not in edge_client.SHARED_MODULES:
            problems.append(f"{where}: {module} is not in edge_client.SHARED_MODULES")
            continue
        if name is None or name == "__version__":
            continue
        public = getattr(importlib.import_module(module), "__all__", None)
        if name.startswith("_") or (public is not None and name not in public):
            problems.append(f"{where}: {module}.{name} is not public")
    return problems


def private_cross_imports(path: Path, package: str) -> list[str]:
    """Imports in ``path`` of a private module (a ``_name`` part) of another package."""
    problems = []
    for line, module, _name in _imported(path):
        parts = module.split(".")
        if parts[0] in PACKAGES and parts[0] != package and any(p.startswith("_") for p in parts):
            problems.append(f"{_where(path, line)}: {module} is private to {parts[0]}")
    return problems


def test_edge_client_source_imports_no_tensorflow_coordinator_or_model_export():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN))
        for path in (ROOT / "edge_client").rglob("*.py")
    }
    assert {p: bad for p, bad in offenders.items() if bad} == {}


def test_importing_every_edge_client_module_loads_no_tensorflow():
    code = """
import importlib, pkgutil, sys
import edge_client
for m in pkgutil.walk_packages(edge_client.__path__, "edge_client."):
    importlib.import_module(m.name)
bad = sorted(n for n in sys.modules if n.split(".")[0] in {"tensorflow", "keras", "coordinator", "model_export"})
print(bad)
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_other_packages_import_only_edge_clients_shared_contract():
    problems = [
        problem
        for package in USERS
        for path in sorted((ROOT / package).rglob("*.py"))
        for problem in contract_violations(path)
    ]
    assert problems == []


def test_no_package_imports_a_private_module_of_another():
    problems = [
        problem
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for problem in private_cross_imports(path, package)
    ]
    assert problems == []


def test_shared_modules_exist_and_are_documented():
    for module in edge_client.SHARED_MODULES:
        importlib.import_module(module)
        assert f"``{module}``" in edge_client.__doc__, f"{module} is not described"


def test_the_rules_catch_a_private_or_unlisted_import(tmp_path):
    # Prepare: a module written as an outside package would write it
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from edge_client.protocol.validation import check_id\n"
        "from edge_client.protocol import _probe\n"
        "from edge_client.client import EdgeClient\n"
        "from devices._x import y\n"
    )
    # Execute
    contract = contract_violations(bad)
    private = private_cross_imports(bad, "coordinator")
    # Assert
    assert [p.split(": ", 1)[1] for p in contract] == [
        "edge_client.protocol.validation is not in edge_client.SHARED_MODULES",
        "edge_client.protocol._probe is not public",
        "edge_client.client is not in edge_client.SHARED_MODULES",
    ]
    assert [p.split(": ", 1)[1] for p in private] == ["devices._x is private to devices"]
