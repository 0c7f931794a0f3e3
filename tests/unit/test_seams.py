"""The transport's seams still fit the installed purerpc, h2 and anyio.

`jobworker.transport._wire.LIBRARY_INTERNALS` names every private or undocumented
attribute and method the transport relies on. An upgrade that renames or drops one
fails here, with the name, instead of as a hang or a leak at run time. The versions
themselves are pinned in pyproject.toml; the second test says when they drift.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import pytest

from jobworker.transport import _wire

ROOT = Path(__file__).resolve().parents[2]


def _instance_attributes(cls: type) -> set[str]:
    """Names any method of `cls` or its bases assigns as `self.NAME` (or annotates)."""
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass.__module__ == "builtins":
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(inspect.cleandoc("\n" + source))):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(target.attr)
    return names


def _has(cls: type, name: str) -> bool:
    if hasattr(cls, name):
        return True
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    return name in _instance_attributes(cls)


@pytest.mark.parametrize("where", sorted(_wire.LIBRARY_INTERNALS))
def test_every_library_internal_the_transport_touches_still_exists(where: str) -> None:
    module_name, class_name = where.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    missing = [name for name in _wire.LIBRARY_INTERNALS[where] if not _has(cls, name)]
    assert not missing, (
        f"{where} no longer has {missing}: the installed library changed under "
        "jobworker/transport/_wire/; see docs/transport.md, 'checking an upgrade'"
    )


def test_the_checker_notices_a_missing_name() -> None:
    """The check above can fail: a name that is not there is reported missing."""
    from purerpc.grpc_socket import SocketWrapper

    assert _has(SocketWrapper, "_flush_event")
    assert not _has(SocketWrapper, "_no_such_attribute")


def test_private_names_are_touched_only_in_the_seams_package() -> None:
    """client.py, server.py, methods.py and identity.py (every transport module
    outside `_wire/`) reach no library internals: every `x._name` in each is a name
    that file itself defines or assigns, and none imports a private name."""
    transport = ROOT / "jobworker/transport"
    for path in transport.rglob("*.py"):
        if path.relative_to(transport).parts[0] == "_wire":
            continue
        tree = ast.parse(path.read_text())
        own = {"_wire"}
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                if isinstance(node.ctx, ast.Store):
                    own.add(node.attr)
                elif not node.attr.startswith("__"):
                    used.add(node.attr)
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
            for alias in node.names
            if alias.name.startswith("_")
        }
        reached = sorted((used - own) | imported)
        assert not reached, f"{path.name} reaches library internals: {reached}"


def _pins() -> dict[str, str]:
    """Exact pins (name==version) among pyproject.toml's runtime dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_libraries_whose_internals_are_used_are_pinned_and_installed() -> None:
    pins = _pins()
    for library in ("purerpc", "h2", "anyio"):
        assert library in pins, f"pyproject.toml must pin {library} exactly (==)"
        installed = importlib.metadata.version(library)
        assert installed == pins[library], (
            f"{library} {installed} is installed but {pins[library]} is pinned; "
            "run ./dev to install the pinned versions"
        )
