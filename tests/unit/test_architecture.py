"""The one-way dependency rule, checked on the source (an import-linter in a test)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"ledger", "consumers", "projections", "api", "jobledger"}

FORBIDDEN = {
    "ledger": {"consumers", "projections", "api", "jobledger"},
    "projections": {"consumers", "api", "jobledger"},
    "consumers": {"api", "projections", "jobledger"},
    "api": {"consumers", "jobledger"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert offences == []


def test_the_domain_does_no_io() -> None:
    """Standard library, eventsourcing's domain module and pydantic (no I/O) only."""
    stdlib = set(sys.stdlib_module_names)
    offences = []
    for path in _modules("ledger/domain"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib and top not in {"socket", "subprocess", "os", "time"}:
                continue
            if top in {"ledger", "pydantic"} or name == "eventsourcing.domain":
                continue
            offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offences == []


def test_nothing_imports_the_composition_root() -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in OURS - {"jobledger"}
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] == "jobledger"
    ]
    assert offences == []
