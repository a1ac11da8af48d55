"""Every library the shipped packages import is declared in pyproject.toml's dependencies.

A library that arrives only through another one's dependencies (anyio through starlette,
prometheus_client through flower) disappears the day that one stops needing it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.processes import ROOT

SHIPPED = ("worker", "config")
# pydantic pins the exact pydantic-core it is built on, and its documentation imports from it
# for custom types: declared through pydantic.
THROUGH = {"pydantic_core": "pydantic"}


def imported_libraries() -> set[str]:
    """Top-level names of what the shipped packages import, beyond the standard library."""
    names: set[str] = set()
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in SHIPPED}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}


def test_every_imported_library_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for name in sorted(imported_libraries()):
        owners = [THROUGH[name]] if name in THROUGH else distributions.get(name, [name])
        if not {canonicalize_name(owner) for owner in owners} & declared():
            undeclared.append(f"{name} ({', '.join(owners)})")
    assert not undeclared, f"imported by worker/ or config/, not declared: {undeclared}"
