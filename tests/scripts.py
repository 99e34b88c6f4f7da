"""Load a script that is not part of a package (bench/, examples/) as a module, by its path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str) -> ModuleType:
    """The module at ``path`` under ``name``, registered in ``sys.modules`` (dataclasses look their
    module up there while the class bodies run)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py``, as ``bench_<name>``."""
    return load_script(ROOT / "bench" / f"{name}.py", f"bench_{name}")
