"""The pure core (every module of ``bridge/core/``) does no I/O, reads no clock, draws no random numbers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BRIDGE_DIR = Path(__file__).resolve().parents[2] / "bridge"
# The folder is the boundary: a module put in bridge/core/ is held to these rules at once.
CORE = tuple(
    f"bridge.core.{path.stem}"
    for path in sorted((BRIDGE_DIR / "core").glob("*.py"))
    if path.stem != "__init__"
)
# The shell's libraries, and the standard modules that mean I/O, a clock, randomness or logging.
FORBIDDEN = frozenset(
    {
        "aiohttp",
        "aio_pika",
        "aiormq",
        "tenacity",
        "structlog",
        "asyncio",
        "logging",
        "time",
        "random",
        "socket",
    }
)

# Runs in a fresh interpreter: records every import statement executed by a bridge module while
# the core loads (cached or not, so "time", loaded at start-up, is seen too) and every module
# that loading the core brought in.
PROBE = """
import builtins, json, sys
before = set(sys.modules)
direct = []
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if importer == "bridge" or importer.startswith("bridge."):
        direct.append([importer, name, list(fromlist or ())])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
for module in sys.argv[1:]:
    __import__(module)
builtins.__import__ = real_import
print(json.dumps({"before": sorted(before), "loaded": sorted(set(sys.modules) - before), "direct": direct}))
"""


def probe(*modules: str) -> dict[str, Any]:
    """What importing ``modules`` in a fresh interpreter imports."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=BRIDGE_DIR.parent,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.fixture(scope="module")
def core_imports() -> dict[str, Any]:
    return probe(*CORE)


class TestImportGraph:
    """Loading the core, in a fresh interpreter, pulls in none of the shell's libraries."""

    def test_probe_sees_what_the_core_does_import(self, core_imports: dict[str, Any]) -> None:
        """The probe works: it sees orjson imported by the payload module, and the core modules loaded."""
        assert ["bridge.core.payload", "orjson", []] in core_imports["direct"]
        assert set(CORE) <= set(core_imports["loaded"])

    def test_probe_sees_a_shell_library(self) -> None:
        """The probe would catch a forbidden import: the app module's aiohttp is seen."""
        shell = probe("bridge.http.app")
        assert "aiohttp" in {top(name) for name in shell["loaded"]}
        assert "aiohttp" in {top(name) for _, name, _ in shell["direct"]}

    def test_no_forbidden_module_loaded(self, core_imports: dict[str, Any]) -> None:
        """None of the forbidden modules is loaded by importing the core."""
        loaded = {top(name) for name in core_imports["loaded"]}
        assert loaded & FORBIDDEN == set()

    def test_no_forbidden_import_statement_runs(self, core_imports: dict[str, Any]) -> None:
        """No bridge module loaded with the core imports a forbidden module, even one already loaded."""
        offending = [entry for entry in core_imports["direct"] if top(entry[1]) in FORBIDDEN]
        assert offending == []

    def test_core_needs_only_the_core(self, core_imports: dict[str, Any]) -> None:
        """The core imports no bridge module outside itself but errors."""
        bridge_modules = {name for name in core_imports["loaded"] if top(name) == "bridge"}
        assert bridge_modules == {"bridge", "bridge.core", "bridge.errors", *CORE}


def module_source(name: str) -> ast.Module:
    path = BRIDGE_DIR / f"{name.removeprefix('bridge.').replace('.', '/')}.py"
    return ast.parse(path.read_text(), filename=str(path))


def imported_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


class TestSource:
    """The core's source, read as a syntax tree, holds no forbidden import and no clock."""

    @pytest.mark.parametrize("module", [*CORE, "bridge.errors"])
    def test_no_forbidden_import(self, module: str) -> None:
        """No import statement anywhere in the module (functions included) names a forbidden module."""
        names = imported_names(module_source(module))
        assert names  # every core module imports something: the walk found them
        assert {top(name) for name in names} & FORBIDDEN == set()

    @pytest.mark.parametrize("module", CORE)
    def test_no_clock_or_randomness(self, module: str) -> None:
        """No call reads the clock, draws a uuid, or opens a file: time and ids come in from outside."""
        impure = {"now", "utcnow", "today", "uuid4", "uuid1", "urandom", "open", "print", "getenv"}
        calls = {
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(module_source(module))
            if isinstance(node, ast.Call)
        }
        assert calls & impure == set()
