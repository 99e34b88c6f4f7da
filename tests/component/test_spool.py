"""The spool on a real disk: durable appends, order, group commit, the size bound, corruption,
the quarantine, upgrades, a full disk and transient SQLite errors."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import SpoolCorrupt, SpoolError, SpoolFull
from bridge.spool.commit import SYNC_BUCKETS, SyncClock
from bridge.spool.drain import Drain, Published
from bridge.spool.reader import Span, SpoolReader, read_quarantine, read_spool_stats
from bridge.spool.schema import ENTRY_OVERHEAD, FILE_NAME
from bridge.spool.store import Spool
from tests.disk import fill_the_disk, mounted_tmpfs


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
            assert [record for _seq, record in first] == [b"one", b"two", b"three"]
            assert (span.count, span.record_bytes) == (3, 11)
            await spool.remove_span(span)
            assert spool.stats.entries == 1
            assert spool.stats.bytes == 4 + ENTRY_OVERHEAD
            rest_span, rest = reader.read(span.last, 10)
            assert rest == [(span.last + 1, b"four")]
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
        import bridge.spool.commit

        held, started = threading.Event(), threading.Event()
        synced: list[int] = []
        real = os.fdatasync

        def slow_fdatasync(fd: int) -> None:
            started.set()
            held.wait(10)
            real(fd)
            synced.append(fd)

        monkeypatch.setattr(bridge.spool.commit.os, "fdatasync", slow_fdatasync)
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

        import bridge.spool.commit

        def failing_fdatasync(_fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(bridge.spool.commit.os, "fdatasync", failing_fdatasync)
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
        import bridge.spool.checkpoint

        monkeypatch.setattr(bridge.spool.checkpoint, "CHECKPOINT_EVERY", 0.2)
        monkeypatch.setattr(bridge.spool.checkpoint, "WAL_PAGES_LIMIT", 256)
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
        span, rows = reader.read(after, limit)
    finally:
        reader.close()
    return span, [record for _seq, record in rows]


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
        clock = SyncClock()
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
    ) -> Published:
        self.windows.append(window)
        span, rows = self.reader.read(after, limit)
        records = [record for _seq, record in rows]
        if arriving := self.arrivals.pop(len(self.windows), []):
            await self.spool.append(arriving)
        self.published.extend(records)
        return Published(span)


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


# Today's schema as release 1 wrote it, byte for byte: what an upgrade finds on disk.
VERSION_1_SCHEMA = """
    CREATE TABLE spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        record BLOB NOT NULL,
        created REAL NOT NULL
    );
    PRAGMA user_version = 1;
"""


def write_version_1_spool(directory: Path, records: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / FILE_NAME, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(VERSION_1_SCHEMA)
        conn.executemany("INSERT INTO spool (record, created) VALUES (?, ?)", [(r, 1.5e9) for r in records])
    finally:
        conn.close()


class TestUpgrade:
    async def test_a_version_1_spool_is_migrated_in_place_and_drained(self, tmp_path: Path) -> None:
        """A spool written by the previous release opens, keeps every entry in order, gains the
        quarantine table and version 2, and drains."""
        kept = [b"first", b"second", b"third"]
        write_version_1_spool(tmp_path, kept)
        spool = Spool(tmp_path, max_bytes=1 << 20)
        spool.open()
        try:
            assert spool.stats.entries == 3
            assert spool.stats.quarantined == 0
            span, read = records(spool)
            assert read == kept
            await spool.remove_span(span, quarantined=[(span.first, "broker_refused")])
            assert spool.stats.entries == 0
            assert spool.stats.quarantined == 1
        finally:
            spool.close()
        conn = sqlite3.connect(tmp_path / FILE_NAME)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
            assert conn.execute("SELECT seq, record FROM quarantine").fetchall() == [(1, b"first")]
        finally:
            conn.close()

    async def test_a_newer_version_is_refused_untouched(self, tmp_path: Path) -> None:
        """A spool written by a later release is not taken apart by this one."""
        write_version_1_spool(tmp_path, [b"x"])
        with sqlite3.connect(tmp_path / FILE_NAME) as conn:
            conn.execute("PRAGMA user_version = 9")
        with pytest.raises(SpoolCorrupt, match="version 9"):
            Spool(tmp_path, max_bytes=1 << 20).open()


class TestBoundedRead:
    async def test_rows_stop_before_max_bytes_is_passed(self, spool: Spool) -> None:
        """(seq, record) rows, oldest first, whose records add up to at most ``max_bytes``."""
        await spool.append([b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 100])
        reader = SpoolReader(spool.path)
        try:
            span, rows = reader.read(0, 10, max_bytes=250)
            assert [record for _seq, record in rows] == [b"a" * 100, b"b" * 100]
            assert [seq for seq, _record in rows] == [span.first, span.first + 1]
            assert (span.count, span.record_bytes, span.last) == (2, 200, span.first + 1)
            _, rest = reader.read(span.last, 10, max_bytes=300)
            assert [record for _seq, record in rest] == [b"c" * 100, b"d" * 100]
        finally:
            reader.close()

    async def test_one_record_larger_than_max_bytes_is_still_read(self, spool: Spool) -> None:
        """A record past the bound on its own is read alone, never skipped or stuck."""
        await spool.append([b"x" * 1000, b"y"])
        reader = SpoolReader(spool.path)
        try:
            span, rows = reader.read(0, 10, max_bytes=10)
            assert [record for _seq, record in rows] == [b"x" * 1000]
            assert span.count == 1
        finally:
            reader.close()


class TestQuarantine:
    async def test_listed_entries_move_to_the_quarantine_as_the_span_is_removed(self, spool: Spool) -> None:
        """The listed seqs are kept in the quarantine with their reason; the span leaves the spool."""
        await spool.append([b"good-1", b"poison", b"good-2"])
        span, _ = records(spool)
        await spool.remove_span(span, quarantined=[(span.first + 1, "broker_refused: frame too large")])
        assert spool.stats.entries == 0
        assert spool.stats.quarantined == 1
        assert records(spool)[1] == []
        (entry,) = read_quarantine(spool.directory)
        assert entry.seq == span.first + 1
        assert entry.record == b"poison"
        assert entry.reason == "broker_refused: frame too large"
        assert entry.quarantined >= entry.created
        stats = read_spool_stats(spool.directory)
        assert stats is not None
        assert (stats.entries, stats.quarantined) == (0, 1)

    async def test_the_quarantine_count_survives_a_restart(self, tmp_path: Path) -> None:
        """The count comes from the file on open, not only from what this process moved."""
        one = Spool(tmp_path, max_bytes=1 << 20)
        one.open()
        await one.append([b"p1", b"p2"])
        span, _ = records(one)
        await one.remove_span(span, quarantined=[(span.first, "r"), (span.last, "r")])
        one.close()
        two = Spool(tmp_path, max_bytes=1 << 20)
        two.open()
        try:
            assert two.stats.quarantined == 2
        finally:
            two.close()


class FlakyConnection:
    """A read-only connection whose first ``failures`` queries fail as a transient error would."""

    def __init__(self, real: sqlite3.Connection, failures: int, error: sqlite3.Error) -> None:
        self.real = real
        self.failures = failures
        self.error = error

    def execute(self, sql: str, parameters: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.real.execute(sql, parameters)

    def close(self) -> None:
        self.real.close()


class TestTransientErrors:
    async def test_an_append_waits_out_another_connections_write_lock(self, spool: Spool) -> None:
        """A second connection holding the write lock (``spool quarantine redrive``) delays an
        append; it is written once the lock goes, and the spool stays writable."""
        await spool.append([b"before"])
        other = sqlite3.connect(spool.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            appending = asyncio.create_task(spool.append([b"during"]))
            await asyncio.sleep(0.3)
            assert not appending.done()
        finally:
            other.execute("COMMIT")
            other.close()
        await asyncio.wait_for(appending, 5)
        assert spool.writable
        assert records(spool)[1] == [b"before", b"during"]

    async def test_a_remove_waits_out_another_connections_write_lock(self, spool: Spool) -> None:
        """The drain's delete is retried, not reported as a failed spool."""
        await spool.append([b"confirmed"])
        span, _ = records(spool)
        other = sqlite3.connect(spool.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        removing = asyncio.create_task(spool.remove_span(span))
        await asyncio.sleep(0.3)
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(removing, 5)
        assert spool.writable
        assert spool.stats.entries == 0

    @pytest.mark.parametrize(
        "error",
        [sqlite3.OperationalError("database is locked"), sqlite3.OperationalError("disk I/O error")],
        ids=["busy", "read_error"],
    )
    async def test_a_read_retries_a_transient_error(self, spool: Spool, error: sqlite3.Error) -> None:
        """Busy or a read error twice, then the read goes through: never SpoolCorrupt."""
        await spool.append([b"r"])
        reader = SpoolReader(spool.path)
        flaky = FlakyConnection(reader._conn, failures=2, error=error)
        reader._conn = flaky  # type: ignore[assignment]
        try:
            _span, rows = reader.read(0, 10)
            assert [record for _seq, record in rows] == [b"r"]
            assert flaky.failures == 0
        finally:
            reader.close()

    async def test_a_corrupt_file_is_still_reported_as_corrupt(self, spool: Spool) -> None:
        """Only an integrity failure (SQLITE_CORRUPT, not a database) is SpoolCorrupt."""
        reader = SpoolReader(spool.path)
        reader._conn = FlakyConnection(  # type: ignore[assignment]
            reader._conn, failures=100, error=sqlite3.DatabaseError("database disk image is malformed")
        )
        try:
            with pytest.raises(SpoolCorrupt):
                reader.read(0, 10)
        finally:
            reader.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted afterwards (root only)."""
    with mounted_tmpfs(tmp_path / "tiny-disk", "4m") as mount_point:
        yield mount_point


async def fill(spool: Spool, record: bytes) -> int:
    """Append ``record`` until the disk refuses (503 spool_full); return how many were kept."""
    refusal: SpoolFull | None = None
    kept = 0
    while refusal is None and kept < 10_000:
        try:
            await spool.append([record])
            kept += 1
        except SpoolFull as refused:
            refusal = refused
    assert refusal is not None, "the disk never filled"
    assert (refusal.code, refusal.retry_after > 0) == ("spool_full", True)
    return kept


class TestDiskFull:
    async def test_a_full_disk_refuses_appends_keeps_the_rest_and_still_removes(
        self, tiny_disk: Path
    ) -> None:
        """ENOSPC on an append: SpoolFull (rolled back, nothing half-kept), the spool stays
        writable, every entry kept before is there, and confirmed entries can be removed on the
        full disk; once the drain has made room, appends are taken again."""
        spool = Spool(tiny_disk / "spool", max_bytes=1 << 30, reserve_bytes=512 * 1024)
        spool.open()
        try:
            record = b"r" * 20_000
            kept = await fill(spool, record)
            assert kept > 10
            assert spool.writable
            assert spool.stats.entries == kept
            span, read = records(spool, limit=100_000)
            assert read == [record] * kept
            await spool.remove_span(span)
            assert spool.stats.entries == 0
            assert spool.writable
            for _ in range(100):  # the room check runs about once a second
                try:
                    await spool.append([b"after-room"])
                    break
                except SpoolFull:
                    await asyncio.sleep(0.1)
            assert records(spool, after=span.last)[1] == [b"after-room"]
        finally:
            spool.close()

    async def test_a_spool_reopened_on_the_full_disk_opens_and_drains(self, tiny_disk: Path) -> None:
        """Closed (or killed) while the disk is full, opened again with the disk still full: it
        opens, every entry is there, and removing them works."""
        directory = tiny_disk / "spool"
        spool = Spool(directory, max_bytes=1 << 30, reserve_bytes=512 * 1024)
        spool.open()
        kept = await fill(spool, b"k" * 20_000)
        spool.close()
        # Whatever the close gave back is taken by someone else.
        await asyncio.to_thread(fill_the_disk, tiny_disk / "filler")
        again = Spool(directory, max_bytes=1 << 30, reserve_bytes=512 * 1024)
        again.open()
        try:
            assert again.stats.entries == kept
            reader = SpoolReader(again.path)
            try:
                after = 0
                while True:
                    span, rows = reader.read(after, 16)
                    if not rows:
                        break
                    await again.remove_span(span)
                    after = span.last
            finally:
                reader.close()
            assert again.stats.entries == 0
            assert again.writable
        finally:
            again.close()
