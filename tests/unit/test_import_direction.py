"""Imports point inward only: cli -> service -> http, spool, amqp (and the shell's top-level
modules) -> core -> errors, read from each module's import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIDGE_DIR = Path(__file__).resolve().parents[2] / "bridge"
# Inner rings first. The error tree is the innermost: every layer, the core included, raises
# its errors, and it imports nothing of the bridge.
RINGS = ("errors", "core", "shell", "service", "cli")


def ring(module: str) -> str:
    """The ring a module of the bridge belongs to, by its folder (or, at the top, its name)."""
    parts = module.split(".")
    if module in ("bridge", "bridge.errors"):
        return "errors"
    if parts[1] == "core":
        return "core"
    if module == "bridge.service":
        return "service"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return "shell"  # http, spool, amqp, and settings, logs, metrics, sink


def module_name(path: Path) -> str:
    parts = path.relative_to(BRIDGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bridge_imports(path: Path) -> set[str]:
    """Every bridge module ``path`` names in an import statement, at any depth (those under
    ``if TYPE_CHECKING:`` or inside a function included)."""
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.stem != "__init__" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == "bridge" or name.startswith("bridge.")}


MODULES = sorted(BRIDGE_DIR.rglob("*.py"))


class TestImportDirection:
    @pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
    def test_imports_only_its_own_ring_or_inner_ones(self, path: Path) -> None:
        """No module imports one of a ring outside its own: the core nothing of the shell, the
        shell neither the service nor the CLI, the service not the CLI."""
        own = RINGS.index(ring(module_name(path)))
        outward = sorted(name for name in bridge_imports(path) if RINGS.index(ring(name)) > own)
        assert outward == [], f"{module_name(path)} ({ring(module_name(path))}) imports outward: {outward}"

    def test_every_ring_is_seen(self) -> None:
        """The rings are read from the tree as it is: each holds at least one module."""
        assert {ring(module_name(path)) for path in MODULES} == set(RINGS)

    @pytest.mark.parametrize(
        ("module", "expected"),
        [
            ("bridge.errors", "errors"),
            ("bridge.core.payload", "core"),
            ("bridge.http.app", "shell"),
            ("bridge.settings", "shell"),
            ("bridge.service", "service"),
            ("bridge.cli.main", "cli"),
            ("bridge.__main__", "cli"),
        ],
        ids=lambda value: value,
    )
    def test_rings_follow_the_folders(self, module: str, expected: str) -> None:
        """A module's ring is its folder's (the top-level modules by name)."""
        assert ring(module) == expected
