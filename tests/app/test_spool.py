"""The spool on a real disk: durable appends, order, group commit, the size bound, corruption."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from bridge.drain import Drain
from bridge.errors import SpoolCorrupt, SpoolError, SpoolFull
from bridge.spool import ENTRY_OVERHEAD, FILE_NAME, SYNC_BUCKETS, Span, Spool, SpoolReader, _SyncClock


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
        span, first = records(spool, limit=2)
        _, rest = records(spool, after=span.last)
        assert first + rest == [b"a", b"b", b"c"]

    async def test_survives_reopen(self, tmp_path: Path) -> None:
        """What append returned for is there after the spool is closed and opened again."""
        one = Spool(tmp_path, max_bytes=1 << 20)
        one.open()
        await one.append([b"kept-1", b"kept-2"])
        one.close()
        two = Spool(tmp_path, max_bytes=1 << 20)
        two.open()
        try:
            assert records(two)[1] == [b"kept-1", b"kept-2"]
            assert two.stats.entries == 2
            assert two.stats.bytes == 12 + 2 * ENTRY_OVERHEAD
        finally:
            two.close()

    async def test_seq_never_reused_after_emptying(self, spool: Spool) -> None:
        """After the spool empties, new entries still sort after every seq handed out before."""
        await spool.append([b"x"])
        old, (_only,) = records(spool)
        await spool.remove_span(old)
        await spool.append([b"y"])
        assert records(spool, after=old.last)[1] == [b"y"]

    async def test_a_reader_elsewhere_reads_what_was_appended_and_its_span_is_removed(
        self, spool: Spool
    ) -> None:
        """The publishing process's read-only reader sees every append; removing the span it read
        leaves the rest, and the spool's counts follow."""
        await spool.append([b"one", b"two", b"three"])
        await spool.append([b"four"])
        reader = SpoolReader(spool.path)
        try:
            span, first = reader.read(0, 3)
            assert first == [b"one", b"two", b"three"]
            assert (span.count, span.record_bytes) == (3, 11)
            await spool.remove_span(span)
            assert spool.stats.entries == 1
            assert spool.stats.bytes == 4 + ENTRY_OVERHEAD
            rest_span, rest = reader.read(span.last, 10)
            assert rest == [b"four"]
            assert reader.read(rest_span.last, 10) == (Span(rest_span.last, rest_span.last, 0, 0), [])
        finally:
            reader.close()
        assert records(spool)[1] == [b"four"]

    async def test_concurrent_appends_share_commits(self, spool: Spool) -> None:
        """200 concurrent appends are made durable in far fewer commits (group commit)."""
        before = spool.commits
        await asyncio.gather(*(spool.append([f"r{i}".encode()]) for i in range(200)))
        commits = spool.commits - before
        assert spool.stats.entries == 200
        assert commits < 100, commits

    async def test_append_waits_for_the_fsync_of_the_wal(
        self, spool: Spool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An append returns only after an fdatasync of the WAL file that began after its write:
        with the fsync held, the append does not return; let go, it does."""
        import bridge.spool

        held, started = threading.Event(), threading.Event()
        synced: list[int] = []
        real = os.fdatasync

        def slow_fdatasync(fd: int) -> None:
            started.set()
            held.wait(10)
            real(fd)
            synced.append(fd)

        monkeypatch.setattr(bridge.spool.os, "fdatasync", slow_fdatasync)
        appending = asyncio.create_task(spool.append([b"must-be-on-disk"]))
        await asyncio.to_thread(started.wait, 5)
        await asyncio.sleep(0.3)
        assert not appending.done()
        assert synced == []
        held.set()
        await asyncio.wait_for(appending, 5)
        assert len(synced) >= 1
        assert os.readlink(f"/proc/self/fd/{synced[0]}") == f"{spool.path}-wal"

    async def test_a_failed_fsync_fails_the_append_and_every_later_one(
        self, spool: Spool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """EIO from fdatasync: the waiting append raises SpoolError, and so does every append after
        it (the file's state can no longer be vouched for)."""
        import errno

        import bridge.spool

        def failing_fdatasync(_fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(bridge.spool.os, "fdatasync", failing_fdatasync)
        with pytest.raises(SpoolError, match="fsync failed"):
            await spool.append([b"never-acknowledged"])
        assert not spool.writable
        monkeypatch.undo()
        with pytest.raises(SpoolError):
            await spool.append([b"after"])

    async def test_checkpoints_let_the_wal_be_reused(self, spool: Spool) -> None:
        """The checkpointer copies the WAL into the file in the background; once it has, the WAL
        is written again from its start, so a spool that keeps taking in and giving back entries
        does not grow its WAL (without checkpoints the second round would double it)."""
        record = b"r" * 400

        async def churn() -> None:
            for _ in range(40):
                await asyncio.gather(*(spool.append([record]) for _ in range(50)))
                await spool.remove_span(records(spool, limit=1000)[0])

        await churn()
        await wait_for_checkpoints(spool, 2)
        first = wal_size(spool)
        await churn()
        await wait_for_checkpoints(spool, 2)
        assert first > 500_000
        assert wal_size(spool) < first * 1.5, (first, wal_size(spool))
        assert spool.stats.entries == 0

    async def test_the_wal_starts_over_while_appends_never_stop(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With 32 appenders that never pause, a checkpoint beside them never catches up; past
        WAL_PAGES_LIMIT one holds the writer briefly, and the WAL starts over instead of growing
        with everything ever appended."""
        import bridge.spool

        monkeypatch.setattr(bridge.spool, "CHECKPOINT_EVERY", 0.2)
        monkeypatch.setattr(bridge.spool, "WAL_PAGES_LIMIT", 256)
        busy = Spool(tmp_path, max_bytes=1 << 34)
        busy.open()
        record = b"r" * 250
        appended = 0
        stop = asyncio.get_running_loop().time() + 3.0

        async def appender() -> None:
            nonlocal appended
            while asyncio.get_running_loop().time() < stop:
                await busy.append([record])
                appended += 1

        try:
            await asyncio.gather(*(appender() for _ in range(32)))
            assert busy.whole_checkpoints >= 2
            # Written once and never started over, the WAL would hold at least a page per
            # transaction, several hundred bytes per append.
            assert wal_size(busy) < appended * 200, (wal_size(busy), appended)
            assert busy.stats.entries == appended
        finally:
            busy.close()
        reopened = Spool(tmp_path, max_bytes=1 << 34)
        reopened.open()
        try:
            assert reopened.stats.entries == appended
        finally:
            reopened.close()

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
            await small.remove_span(records(small, limit=1)[0])
            await small.append([b"x" * 100])
            assert small.stats.entries == 3
        finally:
            small.close()

    async def test_removed_entries_are_gone(self, spool: Spool) -> None:
        """Removing confirmed entries frees their bytes and they are not read again."""
        await spool.append([b"1", b"2", b"3"])
        await spool.remove_span(records(spool, limit=2)[0])
        assert records(spool)[1] == [b"3"]
        assert spool.stats.entries == 1
        assert spool.stats.bytes == 1 + ENTRY_OVERHEAD


def records(spool: Spool, *, after: int = 0, limit: int = 10) -> tuple[Span, list[bytes]]:
    """What the publishing process would read: the span and records after seq ``after``."""
    reader = SpoolReader(spool.path)
    try:
        return reader.read(after, limit)
    finally:
        reader.close()


def wal_size(spool: Spool) -> int:
    return os.stat(f"{spool.path}-wal").st_size


async def wait_for_checkpoints(spool: Spool, count: int, within: float = 5.0) -> None:
    """Wait until the checkpointer ran ``count`` more times (it runs once a second)."""
    target = spool.checkpoints + count
    deadline = asyncio.get_running_loop().time() + within
    while spool.checkpoints < target:
        assert asyncio.get_running_loop().time() < deadline, "no checkpoint ran"
        await asyncio.sleep(0.05)


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


class TestSyncTimes:
    def test_each_time_falls_in_the_bucket_of_the_first_bound_not_below_it(self) -> None:
        """Prometheus buckets are "less than or equal": a bound's own value belongs to it."""
        clock = _SyncClock()
        for seconds in (0.0001, 0.0005, 0.0006, 0.003, 0.003, 1.0, 7.5):
            clock.record(seconds)
        times = clock.read()
        expected = [0] * (len(SYNC_BUCKETS) + 1)
        expected[0] = 2  # 0.0001 and 0.0005
        expected[1] = 1  # 0.0006
        expected[SYNC_BUCKETS.index(0.005)] = 2
        expected[SYNC_BUCKETS.index(1.0)] = 1
        expected[-1] = 1  # past every bound
        assert list(times.counts) == expected
        assert times.count == 7
        assert abs(times.sum - 8.5072) < 1e-9

    async def test_an_open_spool_times_every_fsync(self, spool: Spool) -> None:
        """As many times as fsyncs, each as long as an fsync at least takes (more than nothing)."""
        assert spool.sync_times.count == spool.commits
        for n in range(3):
            await spool.append([b"record %d" % n])
        times = spool.sync_times
        assert times.count == spool.commits >= 1
        assert times.sum > 0


class WindowsSeen:
    """The drain's publisher, reading the real spool: records the window each batch was given,
    and appends ``arrivals[n]`` while publishing batch n (webhooks that come in meanwhile)."""

    def __init__(self, spool: Spool, arrivals: dict[int, list[bytes]]) -> None:
        self.spool = spool
        self.reader = SpoolReader(spool.path)
        self.arrivals = arrivals
        self.windows: list[int | None] = []
        self.published: list[bytes] = []

    async def publish_after(
        self, after: int, limit: int, *, deadline: float | None = None, window: int | None = None
    ) -> Span:
        self.windows.append(window)
        span, records = self.reader.read(after, limit)
        if arriving := self.arrivals.pop(len(self.windows), []):
            await self.spool.append(arriving)
        self.published.extend(records)
        return span


class TestDrainWindow:
    async def test_batches_begun_while_webhooks_arrive_keep_fewer_messages_unconfirmed(
        self, spool: Spool
    ) -> None:
        """The first batch follows an append, the second begins after a batch during which nothing
        arrived, the fourth follows one during which webhooks came in: only the quiet one gets
        the publisher's own window."""
        await spool.append([b"a", b"b"])
        publisher = WindowsSeen(spool, arrivals={3: [b"d"]})
        drain = Drain(spool, publisher, batch=10, busy_window=7)
        task = asyncio.create_task(drain.run())
        try:
            await drain.wait_empty(5)
            await spool.append([b"c"])
            for _ in range(200):
                if spool.stats.entries == 0 and len(publisher.windows) >= 5:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            publisher.reader.close()
        assert publisher.published == [b"a", b"b", b"c", b"d"]
        assert publisher.windows[:5] == [7, None, 7, 7, None]
