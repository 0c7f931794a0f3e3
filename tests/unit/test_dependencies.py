"""Every library the code imports is declared in pyproject.toml, and constraints.txt agrees
with its exact pins (./dev installs with both)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement such as "coverage[toml]>=7.6"."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imports(directory: Path) -> set[str]:
    """The top-level names of the absolute imports of every module under `directory`."""
    found: set[str] = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"jobworker", "tests", "__future__"}


def _distributions(imports: set[str]) -> dict[str, set[str]]:
    """Import name -> the installed distributions that provide it."""
    providers = importlib.metadata.packages_distributions()
    return {
        name: {re.sub(r"[-_.]+", "-", dist).lower() for dist in providers.get(name, [])}
        for name in imports
    }


def test_every_import_of_the_package_is_a_declared_dependency() -> None:
    declared = {_name(requirement) for requirement in PROJECT["dependencies"]}
    undeclared = {
        name: dists
        for name, dists in _distributions(_imports(ROOT / "jobworker")).items()
        if not dists & declared
    }
    assert not undeclared, f"imported by jobworker/ but not in [project] dependencies: {undeclared}"


def test_every_import_of_the_tests_is_declared_for_development() -> None:
    declared = {
        _name(requirement)
        for requirement in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]
    }
    undeclared = {
        name: dists
        for name, dists in _distributions(_imports(ROOT / "tests")).items()
        if not dists & declared
    }
    assert not undeclared, f"imported by tests/ but not declared (dev extra): {undeclared}"


def test_constraints_agree_with_every_exact_pin() -> None:
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[_name(name)] = version.strip()
    for requirement in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            assert constraints.get(_name(name)) == version.strip(), (
                f"pyproject.toml pins {requirement} but constraints.txt has "
                f"{constraints.get(_name(name))}; make them agree"
            )
