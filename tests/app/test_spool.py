"""The spool on a real disk: durable appends, order, group commit, the size bound, corruption."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.errors import SpoolCorrupt, SpoolError, SpoolFull
from bridge.spool import ENTRY_OVERHEAD, FILE_NAME, Spool


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    opened = Spool(tmp_path / "spool", max_bytes=1 << 20)
    opened.open()
    yield opened
    opened.close()


class TestSpool:
    async def test_reads_back_in_append_order(self, spool: Spool) -> None:
        """Entries come back oldest first, and ``after`` pages through them."""
        await spool.append([b"a", b"b"])
        await spool.append([b"c"])
        first = await spool.read(after=0, limit=2)
        rest = await spool.read(after=first[-1].seq, limit=10)
        assert [e.record for e in first + rest] == [b"a", b"b", b"c"]

    async def test_survives_reopen(self, tmp_path: Path) -> None:
        """What append returned for is there after the spool is closed and opened again."""
        one = Spool(tmp_path, max_bytes=1 << 20)
        one.open()
        await one.append([b"kept-1", b"kept-2"])
        one.close()
        two = Spool(tmp_path, max_bytes=1 << 20)
        two.open()
        try:
            assert [e.record for e in await two.read(after=0, limit=10)] == [b"kept-1", b"kept-2"]
            assert two.stats.entries == 2
            assert two.stats.bytes == 12 + 2 * ENTRY_OVERHEAD
        finally:
            two.close()

    async def test_seq_never_reused_after_emptying(self, spool: Spool) -> None:
        """After the spool empties, new entries still sort after every seq handed out before."""
        await spool.append([b"x"])
        (old,) = await spool.read(after=0, limit=10)
        await spool.remove([old])
        await spool.append([b"y"])
        assert [e.record for e in await spool.read(after=old.seq, limit=10)] == [b"y"]

    async def test_concurrent_appends_share_commits(self, spool: Spool) -> None:
        """200 concurrent appends are made durable in far fewer commits (group commit)."""
        before = spool.commits
        await asyncio.gather(*(spool.append([f"r{i}".encode()]) for i in range(200)))
        commits = spool.commits - before
        assert spool.stats.entries == 200
        assert commits < 100, commits

    async def test_bound_refuses_and_drops_nothing(self, tmp_path: Path) -> None:
        """Past BRIDGE_SPOOL_MAX_BYTES append raises SpoolFull; what was kept stays."""
        small = Spool(tmp_path, max_bytes=3 * (100 + ENTRY_OVERHEAD))
        small.open()
        try:
            for _ in range(3):
                await small.append([b"x" * 100])
            with pytest.raises(SpoolFull) as refused:
                await small.append([b"x" * 100])
            assert refused.value.retry_after > 0
            assert small.stats.entries == 3
            entries = await small.read(after=0, limit=10)
            await small.remove(entries[:1])
            await small.append([b"x" * 100])
            assert small.stats.entries == 3
        finally:
            small.close()

    async def test_removed_entries_are_gone(self, spool: Spool) -> None:
        """Removing confirmed entries frees their bytes and they are not read again."""
        await spool.append([b"1", b"2", b"3"])
        entries = await spool.read(after=0, limit=10)
        await spool.remove(entries[:2])
        assert [e.record for e in await spool.read(after=0, limit=10)] == [b"3"]
        assert spool.stats.entries == 1
        assert spool.stats.bytes == 1 + ENTRY_OVERHEAD


class TestSpoolRefusesToStart:
    async def test_corrupt_file(self, tmp_path: Path) -> None:
        """A spool file that is not a database stops start-up with a message naming it."""
        (tmp_path / FILE_NAME).write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(SpoolCorrupt, match=FILE_NAME):
            Spool(tmp_path, max_bytes=1 << 20).open()

    async def test_foreign_database(self, tmp_path: Path) -> None:
        """A SQLite file of some other program is not taken for an empty spool."""
        import sqlite3

        with sqlite3.connect(tmp_path / FILE_NAME) as conn:
            conn.execute("CREATE TABLE other (x)")
        with pytest.raises(SpoolCorrupt, match="not a servio-bridge spool"):
            Spool(tmp_path, max_bytes=1 << 20).open()

    async def test_second_process_on_same_directory(self, spool: Spool) -> None:
        """Two bridges never share one spool directory."""
        with pytest.raises(SpoolError, match="in use"):
            Spool(spool.directory, max_bytes=1 << 20).open()
