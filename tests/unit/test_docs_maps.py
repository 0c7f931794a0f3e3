"""The two maps of the code stay true to the tree: README.md's layout table and
docs/architecture.md's modules table.

A row's first cell names paths in backticks: a full path from the repository's root
(`jobworker/jobs/store.py`, a package as `jobworker/jobs/`), or, after one, a bare
name in the same directory (`jobworker/model.py`, `units.py`: a group of modules).
A package's row names its modules in its second cell (`status`, `_wire/`).
The generated `jobworker/v1/` counts as one entry.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jobworker"
GENERATED = PACKAGE / "v1"


@attrs.frozen
class Row:
    paths: tuple[str, ...]  # from the repository's root; a package ends in "/"
    text: str  # the rest of the row


def table_after(document: Path, heading: str) -> list[Row]:
    """The rows of the first table below `heading` in `document`."""
    lines = document.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[Row] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if rows:
                break
            continue
        first, _, rest = line.strip("|").partition("|")
        names = re.findall(r"`([^`]+)`", first)
        if not names or set(first.strip()) <= {"-", " "}:
            continue
        paths: list[str] = []
        for name in names:
            if "/" in name.rstrip("/") or not paths:
                paths.append(name)
            else:
                paths.append(paths[-1].rsplit("/", 1)[0] + "/" + name)
        rows.append(Row(tuple(paths), rest))
    assert rows, f"{document.name}: no table under {heading!r}"
    return rows


def entries() -> list[str]:
    """Every module and package under jobworker/ (not the package itself), `jobworker/v1/` as one."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*")):
        if GENERATED in path.parents or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() and (path / "__init__.py").exists():
            found.append(relative + "/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found.append(relative)
    return found


def is_named(entry: str, rows: list[Row]) -> bool:
    """`entry` has a row of its own, or a row under it (a package), or its package's row
    names it."""
    paths = {path for row in rows for path in row.paths}
    if entry in paths:
        return True
    if entry.endswith("/") and any(path.startswith(entry) for path in paths):
        return True
    package, _, module = entry.rstrip("/").rpartition("/")
    stem = module.removesuffix(".py")
    mention = re.compile(rf"`{re.escape(stem)}(\.py|/)?[`(. ]")
    return any(package + "/" in row.paths and mention.search(row.text) for row in rows)


def stale(rows: list[Row]) -> list[str]:
    return [path for row in rows for path in row.paths if not (ROOT / path).exists()]


ARCHITECTURE = table_after(ROOT / "docs" / "architecture.md", "## Modules")
LAYOUT = table_after(ROOT / "README.md", "## Layout")


def test_every_module_and_package_is_in_the_architecture_modules_table() -> None:
    missing = [entry for entry in entries() if not is_named(entry, ARCHITECTURE)]
    assert missing == [], f"docs/architecture.md's modules table does not name: {missing}"


def test_every_path_either_table_names_exists() -> None:
    assert stale(ARCHITECTURE) == [], (
        f"docs/architecture.md's modules table names paths that do not exist: {stale(ARCHITECTURE)}"
    )
    assert stale(LAYOUT) == [], (
        f"README.md's layout table names paths that do not exist: {stale(LAYOUT)}"
    )


def test_the_readme_layout_covers_every_top_level_package_and_module() -> None:
    """Each of jobworker/'s own modules and packages has a row, a row inside it, or a
    place in a group's row."""
    top = [entry for entry in entries() if entry.rstrip("/").count("/") == 1]
    paths = {path for row in LAYOUT for path in row.paths}
    missing = [
        entry
        for entry in top
        if entry not in paths and not any(path.startswith(entry) for path in paths)
    ]
    assert missing == [], f"README.md's layout table does not cover: {missing}"
