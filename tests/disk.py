"""A small disk of a test's own: a tmpfs it mounts (root only), fills, and always unmounts."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "4m") on ``mount_point``; the test is skipped where mounting is not
    allowed, and the file system is unmounted whatever the test did."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_the_disk(path: Path) -> None:
    """Take whatever room is left on the file system of ``path``."""
    with contextlib.suppress(OSError), open(path, "wb") as out:
        while True:
            out.write(b"\0" * 4096)
            out.flush()
