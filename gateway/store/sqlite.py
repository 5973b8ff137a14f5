"""The embedded store: one SQLite file in WAL mode, written by one thread with group commit.

Writes from the event loop go to the store's writer (``gateway.store.writer``, shared with the Redis
engine: the order, the batches, the retries while the disk is full, closing); each batch it takes, of
whatever has gathered, is committed here as one transaction, on the one thread that holds the write
connection (a blocking commit never runs on the loop). The writer then answers every write on the
loop, in order: each one's ``on_commit`` runs before its awaiting caller resumes. Concurrent Submits
thus share a commit, and nobody is answered before their write is durable. Reads run on a small thread
pool with connections of their own (WAL lets them read beside the writer). Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway import metrics
from gateway.errors import StartupError, Unavailable
from gateway.jobs import (
    Job,
    JobFailure,
    JobState,
    Result,
    Segment,
    WebhookSpec,
    compact_json,
    decode_result,
    encode_result,
    webhook_wanted,
)
from gateway.store.base import (
    CreateOutcome,
    JobFilter,
    ResumableJob,
    RevisionConflict,
    WebhookClaim,
    Writability,
    keeps_inputs,
)
from gateway.store.uploads import UploadFiles
from gateway.store.writer import CannotWrite, Outcome, ThreadWriter

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    route TEXT NOT NULL,
    state INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    progress REAL NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    expires REAL,
    labels TEXT NOT NULL,
    error TEXT,
    queue_position INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    segment_count INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    position INTEGER NOT NULL DEFAULT 0,  -- the change position of the latest revision (WatchJobs resumes)
    webhook TEXT,  -- {"url", "events"} given at Submit
    logs TEXT NOT NULL DEFAULT '',  -- the tail of an upstream's log (the latest revision's)
    queue_timeout REAL NOT NULL DEFAULT 0,  -- seconds it may wait QUEUED; 0: no limit
    run_timeout REAL NOT NULL DEFAULT 0,  -- seconds it may run; 0: no limit
    priority INTEGER NOT NULL DEFAULT 3,  -- 1 (most urgent) to 5
    retry_of TEXT NOT NULL DEFAULT '',  -- made by Retry: the job it runs again
    attempt INTEGER NOT NULL DEFAULT 1,  -- the run (automatic retries of transient failures add one)
    payload BLOB,  -- small inputs inline (large ones in payloads), dropped when the job ends (a failed one's kept)
    result TEXT    -- last: reading the other columns never touches its overflow pages
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_request ON jobs (tenant, request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revisions (
    job_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state INTEGER NOT NULL,
    progress REAL NOT NULL,
    started REAL,
    finished REAL,
    expires REAL,
    error TEXT,
    queue_position INTEGER NOT NULL,
    segment_count INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, revision)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (job_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (job_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    pending INTEGER NOT NULL,  -- the latest revision marked for delivery
    due REAL,                  -- when a dispatcher should look (NULL: not until a revision is marked)
    lease REAL NOT NULL DEFAULT 0,  -- claimed by a dispatcher until then
    state TEXT                 -- the delivery state (gateway.webhooks), JSON
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhooks_by_due ON webhooks (due) WHERE due IS NOT NULL;
"""

_INSERT_JOB = "INSERT INTO jobs ({columns}, position, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_PAYLOAD = "INSERT INTO payloads (job_id, data) VALUES (?, ?)"  # params: (job id, the payload)
_RESERVE_PAYLOAD = "INSERT INTO payloads (job_id, data) VALUES (?, zeroblob(?))"
_BLOB_CHUNK = 1024 * 1024
_UPDATE_JOB = (
    "UPDATE jobs SET state = ?, revision = ?, progress = ?, started = ?, finished = ?, expires = ?, "
    "error = ?, queue_position = ?, logs = ?, attempt = ?, segment_count = ?, attempts = attempts + ?, position = ?, "
    "checkpoint = CASE WHEN ? THEN NULL ELSE checkpoint END, "
    "payload = CASE WHEN ? THEN NULL ELSE payload END, result = COALESCE(?, result) "
    # The compare-and-set: the job is at the revision before this one, and (when the writer says
    # which run it is) at that attempt.
    "WHERE id = ? AND revision = ? AND (? < 0 OR attempts + ? = ?)"
)
_INSERT_REVISION = (
    "INSERT INTO revisions (job_id, revision, state, progress, started, finished, expires, error, "
    "queue_position, segment_count, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_SEGMENT = "INSERT OR REPLACE INTO segments (job_id, idx, data) VALUES (?, ?, ?)"
_DELETE_PAYLOAD = "DELETE FROM payloads WHERE job_id = ?"
# A revision a webhook may want: due now, unless a dispatcher holds it (then it sees `pending` moved).
_MARK_WEBHOOK = (
    "INSERT INTO webhooks (job_id, url, pending, due) VALUES (?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
    "pending = excluded.pending, due = CASE WHEN webhooks.lease > excluded.due THEN webhooks.due "
    "WHEN webhooks.due IS NULL OR webhooks.due > excluded.due THEN excluded.due ELSE webhooks.due END"
)
_SAVE_POSITION = "INSERT OR REPLACE INTO meta (key, value) VALUES ('position', ?)"

_JOB_COLUMNS = (
    "id, tenant, route, state, revision, progress, created, started, finished, expires, labels, error, "
    "queue_position, request_id, request_hash, segment_count, attempts, checkpoint, webhook, logs, queue_timeout, "
    "run_timeout, priority, retry_of, attempt"
)
_INSERT_JOB = _INSERT_JOB.format(columns=_JOB_COLUMNS)
# The writer runs a batch's plain statements kind by kind with executemany, in this order, which
# keeps every job's own order: its row exists before it is updated, updates apply in sequence.
_STATEMENT_ORDER = {
    sql: i for i, sql in enumerate(
        (_INSERT_JOB, _INSERT_PAYLOAD, _UPDATE_JOB, _INSERT_REVISION, _INSERT_SEGMENT, _DELETE_PAYLOAD, _MARK_WEBHOOK)
    )
}
_MAX_BATCH = 1024
# Inputs up to this size live in the jobs row: one statement fewer to store and to drop. Larger ones
# (audio) get a row of their own, so that the job's updates never rewrite them.
INLINE_PAYLOAD_BYTES = 64 * 1024


_dumps = compact_json


def _error_json(error: JobFailure | None) -> str | None:
    return None if error is None else _dumps(error.to_dict())


def _revision_row(job: Job, segment_count: int) -> tuple[Any, ...]:
    return (job.id, job.revision, int(job.state), job.progress, job.started, job.finished, job.expires,
            _error_json(job.error), job.queue_position, segment_count, job.attempt)


def _then(first: Callable[[Any], None] | None, then: Callable[[], None]) -> Callable[[Any], None]:
    """An on_commit that runs ``first`` (if any), then ``then``."""
    def both(outcome: Any) -> None:
        try:
            if first is not None:
                first(outcome)
        finally:
            then()
    return both


def _insert_payloads(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Large inputs, written into a reserved blob a chunk at a time: bound as a parameter, SQLite would
    copy a payload twice (the bound value, then the row's record) while the statement runs."""
    for job_id, payload in rows:
        rowid = conn.execute(_RESERVE_PAYLOAD, (job_id, len(payload))).lastrowid
        assert rowid is not None
        view = memoryview(payload)
        with conn.blobopen("payloads", "data", rowid) as blob:
            for offset in range(0, len(view), _BLOB_CHUNK):
                blob.write(view[offset:offset + _BLOB_CHUNK])


@dataclass(slots=True)
class _Statements:
    """A write made only of plain statements (no reads): batched with the others of its commit."""

    statements: list[tuple[str, tuple[Any, ...]]]
    result: Any = None

    def run(self, conn: sqlite3.Connection) -> Any:
        for sql, params in self.statements:
            if sql is _INSERT_PAYLOAD:
                _insert_payloads(conn, [params])
                continue
            cursor = conn.execute(sql, params)
            if sql is _UPDATE_JOB and cursor.rowcount != 1:
                raise _conflict(conn, params)
        return self.result


@dataclass(slots=True)
class _Write:
    fn: Callable[[sqlite3.Connection], Any] | _Statements
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None
    position: int = 0  # the change position this write takes, if it changes a job


def _cannot_write(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" and I/O errors: nothing can be written until they pass."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR))
    text = str(exc)
    return "disk is full" in text or "disk I/O error" in text


def _closing_error() -> Unavailable:
    """What the writes of a batch fail with when the disk is full as the store closes."""
    return Unavailable("the store could not write (disk full?)", reason="STORE_UNAVAILABLE")


LOCK_FILE = "gateway.lock"


def _disk_full(directory: Path, cause: str | None) -> StartupError:
    """The one line for a start on a disk with no room: the store cannot even write its schema, and
    nothing it would do can fix that, so the operator is told where and what to do (not a traceback)."""
    return StartupError(f"the data dir {directory} is on a full disk ({cause or 'no space left'}): free space "
                        "there, or set data_dir (--data-dir) to a directory on a disk with room",
                        StartupError.DATA_DIR)


def _no_room(directory: Path) -> bool:
    """Whether the data dir's disk is (all but) full: an existing store on a full disk fails to open
    with an I/O error, not SQLite's "disk is full" (its shared-memory file cannot be made), and the
    operator should still be told that space is what is missing."""
    try:
        disk = os.statvfs(directory)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < 1 << 20


def _made_by_start(path: Path) -> tuple[list[Path], list[Path]]:
    """What a start may create, that is not there yet: the data dir and any missing parents (deepest
    first), and the store's files. A start that fails removes exactly these, so it leaves behind
    neither an empty lock file and database (which look like a store that once ran) nor anything
    an operator had put there before."""
    directories = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    files = [f for f in (path.parent / LOCK_FILE, path, *(Path(f"{path}{x}") for x in ("-wal", "-shm", "-journal")))
             if not f.exists()]
    return directories, files


def _remove(directories: list[Path], files: list[Path]) -> None:
    for file in files:
        with contextlib.suppress(OSError):
            file.unlink()
    for directory in directories:  # deepest first; one that is not empty now is someone else's too
        with contextlib.suppress(OSError):
            directory.rmdir()


def _own_data_dir(directory: Path) -> int:
    """Makes the data dir if need be and takes its exclusive lock (``gateway.lock``, holding the owner's
    pid) for as long as the store is open: two processes writing one SQLite store would each resume
    the other's jobs. The lock is the kernel's (flock), so it goes with a killed process."""
    if directory.exists() and not directory.is_dir():
        raise StartupError(f"the data dir {directory} is a file, not a directory: set data_dir (--data-dir) to a "
                           "directory", StartupError.DATA_DIR)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(directory, exc.strerror) from None
        raise StartupError(f"the data dir {directory} cannot be used ({exc.strerror}): set data_dir (--data-dir) to a "
                           "writable directory", StartupError.DATA_DIR) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"the data dir {directory} is in use by another gateway process (pid {holder}); one "
                           "process owns a data dir: stop that one, or set another data_dir (--data-dir)",
                           StartupError.DATA_DIR_IN_USE) from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SqliteStore:
    """The embedded default store. Use as ``async with SqliteStore(path) as store``."""

    shared = False
    keep_failed_inputs = True

    def __init__(self, path: Path, synchronous: str = "NORMAL", readers: int = 2) -> None:
        self.path = path
        self._synchronous = synchronous
        self._readers = readers
        self._writer: ThreadWriter[_Write] | None = None  # its thread holds the write connection
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        # Every reader thread's connection, closed by close(): the last connection to close checkpoints the WAL
        # and removes it and the shared-memory file (left to the collector, they may outlive the process).
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._large_payloads: set[str] = set()  # jobs whose inputs are in the payloads table
        self._uploads = UploadFiles(path.parent / "uploads")  # the audio of Uploads, a file per job
        self._lock_fd: int | None = None  # the data dir's lock, held while the store is open
        # False while writes fail for want of space (or on I/O errors): the writer keeps retrying the
        # same batch, in order, so no accepted job is left behind; new jobs are refused meanwhile.
        self._writability = Writability("is the disk full?")
        # Change positions: taken in the order writes are queued, which is the commit order (one
        # writer, in order), so they order every job's changes as watchers see them. The highest
        # one given out is kept in the meta table, so positions never repeat across restarts.
        self._position = 0
        self.store_id = ""

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row  # rows are read by column name
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        made = _made_by_start(self.path)
        try:
            self._lock_fd = _own_data_dir(self.path.parent)
        except StartupError:
            _remove(made[0], [])  # the lock file was not made, or is another process's
            raise
        try:
            conn = self._connect()
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            # A disk already full (or failing) at start: not a store that will heal while it runs, as
            # it does once open (the writer's retries), since there is no schema yet to write into.
            if not _cannot_write(exc):
                raise
            _remove(*made)  # while still holding the lock: nobody else's start sees them go
            os.close(self._lock_fd)
            self._lock_fd = None
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(exc) \
                    or _no_room(self.path.parent):
                raise _disk_full(self.path.parent, str(exc)) from None
            raise StartupError(f"the data dir {self.path.parent} cannot be written ({exc}): check its disk, or set "
                               "data_dir (--data-dir) to another directory", StartupError.DATA_DIR) from None
        self._pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-read")
        self._writer = ThreadWriter("sqlite", functools.partial(self._commit, conn), self._writability,
                                    max_batch=_MAX_BATCH, closing_error=_closing_error, logger=log, finish=conn.close)
        self._writer.start()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """The schema (made or brought up to date) and what the store keeps in memory from it."""
        conn.executescript(_SCHEMA)
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "position" not in columns:  # a data dir from before change positions
            conn.execute("ALTER TABLE jobs ADD COLUMN position INTEGER NOT NULL DEFAULT 0")
        if "webhook" not in columns:  # from before webhooks
            conn.execute("ALTER TABLE jobs ADD COLUMN webhook TEXT")
        if "logs" not in columns:  # from before upstream logs
            conn.execute("ALTER TABLE jobs ADD COLUMN logs TEXT NOT NULL DEFAULT ''")
        for column in ("queue_timeout", "run_timeout"):  # from before deadlines
            if column not in columns:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
        if "priority" not in columns:  # from before priorities
            conn.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 3")
        if "retry_of" not in columns:  # from before retries
            conn.execute("ALTER TABLE jobs ADD COLUMN retry_of TEXT NOT NULL DEFAULT ''")
            conn.execute("ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")
        if "attempt" not in {row["name"] for row in conn.execute("PRAGMA table_info(revisions)")}:
            conn.execute("ALTER TABLE revisions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1")
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_queue_deadline ON jobs (created + queue_timeout) "
                     "WHERE state = 1 AND queue_timeout > 0")
        # This process owns the data dir: claims of a process that is gone are due at once.
        conn.execute("UPDATE webhooks SET due = ?, lease = 0 WHERE lease > 0", (time.time(),))
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_position ON jobs (tenant, position)")
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(8))))")
        meta = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
        self.store_id = str(meta["store_id"])
        highest = conn.execute("SELECT MAX(position) AS highest FROM jobs").fetchone()["highest"] or 0
        self._position = max(int(meta.get("position", 0)), int(highest))

        def kept(ids: Iterable[str]) -> set[str]:  # jobs whose inputs are still kept (not ended)
            return {i for i in ids if conn.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND (payload IS NOT NULL OR id IN (SELECT job_id FROM payloads))",
                (i,)).fetchone()}

        self._uploads.recover(kept)

    @property
    def writable(self) -> bool:
        return self._writability.writable

    def on_writable(self, listener: Callable[[bool], None]) -> None:
        """Calls ``listener(writable)`` on the event loop whenever writing stops or starts working again."""
        self._writability.listen(listener)

    def on_reset(self, listener: Callable[[], None]) -> None:
        """Nothing to tell: the file is this process's own, and nobody replaces it while it runs."""

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._readers_lock:
            readers, self._reader_conns = self._reader_conns, []
        for conn in readers:  # (made with check_same_thread=False: closed here, their threads gone)
            conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    # -- the writer's step ------------------------------------------------------------------------

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[Outcome]:
        """The writer's step, on its thread (the one that holds the connection: the loop never waits on
        the disk). A full disk (or I/O errors): CannotWrite, and the writer tries the same batch again."""
        started = time.perf_counter()
        try:
            outcomes = self._commit_batch(conn, batch)
        except sqlite3.Error as exc:
            if not _cannot_write(exc):
                raise
            raise CannotWrite() from None
        metrics.observe_commit("sqlite", len(batch), time.perf_counter() - started)
        return outcomes

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[Outcome]:
        """One outcome per write, in order: all of them in one transaction, or, if one of them fails
        (a compare-and-set refused), each in its own, so that only that one fails."""
        outcomes: list[Outcome] = []
        pending: dict[str, list[tuple[Any, ...]]] = {}

        def flush() -> None:
            for sql in sorted(pending, key=_STATEMENT_ORDER.__getitem__):
                if sql is _INSERT_PAYLOAD:
                    _insert_payloads(conn, pending[sql])
                    continue
                cursor = conn.executemany(sql, pending[sql])
                if sql is _UPDATE_JOB and cursor.rowcount != len(pending[sql]):
                    # A compare-and-set failed: undo, and find the culprit write by write (below).
                    raise RevisionConflict("a revision did not follow its job's current one")
            pending.clear()

        position = max(w.position for w in batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if position:
                conn.execute(_SAVE_POSITION, (str(position),))
            for write in batch:
                fn = write.fn
                if isinstance(fn, _Statements):
                    for sql, params in fn.statements:
                        pending.setdefault(sql, []).append(params)
                    outcomes.append((fn.result, None))
                else:
                    flush()
                    outcomes.append((fn(conn), None))
            flush()
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if _cannot_write(exc):  # no write can succeed now: the whole batch is tried again
                raise
            # Rare: one write failed. Undo the batch and run each write in its own transaction, so
            # that only the failing one reports an error.
            outcomes = []
            for write in batch:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    fn = write.fn
                    result = fn.run(conn) if isinstance(fn, _Statements) else fn(conn)
                    conn.execute("COMMIT")
                    outcomes.append((result, None))
                except Exception as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    outcomes.append((None, exc))
            if position:
                conn.execute(_SAVE_POSITION, (str(position),))
        return outcomes

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], T] | _Statements,
        on_commit: Callable[[Any], None] | None = None,
        position: int = 0,
    ) -> asyncio.Future[T]:
        if self._writer is None:
            raise RuntimeError("store is closed")
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._writer.put(_Write(fn, future, on_commit, position))
        return future

    def _next_position(self) -> int:
        self._position += 1
        return self._position

    # -- reads -----------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._loop is not None and self._pool is not None
        return await self._loop.run_in_executor(self._pool, lambda: fn(self._reader()))

    # -- rows <-> jobs ---------------------------------------------------------------------------

    @staticmethod
    def _segments(conn: sqlite3.Connection, job_id: str, count: int) -> tuple[Segment, ...]:
        if count <= 0:
            return ()
        rows = conn.execute(
            "SELECT data FROM segments WHERE job_id = ? AND idx < ? ORDER BY idx", (job_id, count)
        ).fetchall()
        return tuple(Segment.from_dict(json.loads(r["data"])) for r in rows)

    def _job_from_row(self, conn: sqlite3.Connection, row: sqlite3.Row, with_segments: bool = True) -> Job:
        """A row of ``SELECT {_JOB_COLUMNS}`` (and maybe more columns) as its job."""
        error, webhook = row["error"], row["webhook"]
        return Job(
            id=row["id"],
            tenant=row["tenant"],
            route=row["route"],
            state=JobState(row["state"]),
            revision=row["revision"],
            progress=row["progress"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            expires=row["expires"],
            labels=json.loads(row["labels"]),
            error=JobFailure.from_dict(json.loads(error)) if error else None,
            segments=self._segments(conn, row["id"], row["segment_count"]) if with_segments else (),
            queue_position=row["queue_position"],
            request_id=row["request_id"],
            webhook=WebhookSpec.from_dict(json.loads(webhook)) if webhook else None,
            logs=row["logs"],
            queue_timeout=row["queue_timeout"],
            run_timeout=row["run_timeout"],
            priority=row["priority"],
            retry_of=row["retry_of"],
            attempt=row["attempt"],
        )

    def _resumable_from_row(self, conn: sqlite3.Connection, row: sqlite3.Row) -> ResumableJob:
        checkpoint = row["checkpoint"]
        return ResumableJob(self._job_from_row(conn, row), row["attempts"], json.loads(checkpoint) if checkpoint else None)

    # -- writes ----------------------------------------------------------------------------------

    async def create_job(
        self, job: Job, request_hash: str, payload: bytes, on_commit: Callable[[Any], None] | None = None
    ) -> CreateOutcome:
        self._writability.check()
        inline = len(payload) <= INLINE_PAYLOAD_BYTES
        position = self._next_position()
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (_INSERT_JOB, (job.id, job.tenant, job.route, int(job.state), job.revision, job.progress, job.created,
                           job.started, job.finished, job.expires, _dumps(dict(job.labels)) if job.labels else "{}",
                           _error_json(job.error), job.queue_position, job.request_id, request_hash, 0, 0, None,
                           None if job.webhook is None else _dumps(job.webhook.to_dict()), job.logs,
                           job.queue_timeout, job.run_timeout, job.priority, job.retry_of, job.attempt, position,
                           payload if inline else None)),
            (_INSERT_REVISION, _revision_row(job, 0)),
        ]
        if not inline:
            statements.append((_INSERT_PAYLOAD, (job.id, payload)))
            self._large_payloads.add(job.id)
        insert = _Statements(statements, CreateOutcome(job, True, request_hash, position))
        if not job.request_id:
            outcome: CreateOutcome = await self._submit(insert, on_commit, position)
            return outcome

        def write(conn: sqlite3.Connection) -> CreateOutcome:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND request_id = ? AND request_id != ''",
                (job.tenant, job.request_id),
            ).fetchone()
            if row is not None:
                expires = row["expires"]
                if expires is None or expires > job.created:
                    return CreateOutcome(self._job_from_row(conn, row), False, row["request_hash"])
                self._delete(conn, row["id"])  # expired but not swept yet: the key is free again
            created: CreateOutcome = insert.run(conn)
            return created

        outcome = await self._submit(write, on_commit, position)
        return outcome

    def save_revision(
        self,
        job: Job,
        new_segments: Sequence[Segment] = (),
        result: Result | None = None,
        on_commit: Callable[[Any], None] | None = None,
        count_attempt: bool = False,
        attempt: int | None = None,
    ) -> asyncio.Future[None]:
        count = len(job.segments)
        first = count - len(new_segments)
        terminal = job.terminal
        drop = not keeps_inputs(job, self.keep_failed_inputs)
        position = self._next_position()
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (_UPDATE_JOB, (int(job.state), job.revision, job.progress, job.started, job.finished, job.expires,
                           _error_json(job.error), job.queue_position, job.logs, job.attempt, count,
                           1 if count_attempt else 0,
                           position,
                           terminal, drop, None if result is None else encode_result(result), job.id,
                           job.revision - 1, -1 if attempt is None else attempt, 1 if count_attempt else 0,
                           -1 if attempt is None else attempt)),
            (_INSERT_REVISION, _revision_row(job, count)),
        ]
        statements += [(_INSERT_SEGMENT, (job.id, first + i, _dumps(s.to_dict()))) for i, s in enumerate(new_segments)]
        if drop and job.id in self._large_payloads:
            self._large_payloads.discard(job.id)
            statements.append((_DELETE_PAYLOAD, (job.id,)))
        if drop and job.id in self._uploads.held:  # its audio goes once the end is stored
            on_commit = _then(on_commit, functools.partial(self._uploads.drop, job.id))
        if job.webhook is not None and webhook_wanted(job):
            statements.append((_MARK_WEBHOOK, (job.id, job.webhook.url, job.revision, time.time())))
        return self._submit(_Statements(statements, position), on_commit, position)

    async def save_checkpoint(self, job_id: str, checkpoint: Mapping[str, Any]) -> None:
        data = _dumps(dict(checkpoint))
        await self._submit(lambda conn: conn.execute("UPDATE jobs SET checkpoint = ? WHERE id = ?", (data, job_id)))

    async def start_attempt(self, job_id: str) -> int:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (job_id,))
            row = conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return int(row["attempts"]) if row else 0

        attempts: int = await self._submit(write)
        return attempts

    async def take_over(self, job_id: str) -> ResumableJob | None:
        def write(conn: sqlite3.Connection) -> ResumableJob | None:
            conn.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (job_id,))
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            return self._resumable_from_row(conn, row)

        found: ResumableJob | None = await self._submit(write)
        return found

    async def spare_attempt(self, job_id: str, attempt: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ? AND attempts = ? AND attempts > 0",
                         (job_id, attempt))

        await self._submit(write)

    @staticmethod
    def _delete(conn: sqlite3.Connection, job_id: str) -> None:
        for table, column in (("jobs", "id"), ("revisions", "job_id"), ("segments", "job_id"),
                              ("payloads", "job_id"), ("webhooks", "job_id")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

    async def delete(self, job_id: str, tombstone_until: float | None = None) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if tombstone_until is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO tombstones (job_id, tenant, until) SELECT id, tenant, ? FROM jobs WHERE id = ?",
                    (tombstone_until, job_id),
                )
            self._delete(conn, job_id)
            self._uploads.drop(job_id)
            self._large_payloads.discard(job_id)

        await self._submit(write)

    async def sweep(self, now: float, tombstone_until: float) -> list[Job]:
        def write(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE expires IS NOT NULL AND expires <= ? LIMIT 5000", (now,)
            ).fetchall()
            expired = [self._job_from_row(conn, row, with_segments=False) for row in rows]
            for job in expired:
                conn.execute(
                    "INSERT OR REPLACE INTO tombstones (job_id, tenant, until) VALUES (?, ?, ?)",
                    (job.id, job.tenant, tombstone_until),
                )
                self._delete(conn, job.id)
                self._uploads.drop(job.id)
                self._large_payloads.discard(job.id)
            conn.execute("DELETE FROM tombstones WHERE until <= ?", (now,))
            return expired

        swept: list[Job] = await self._submit(write)
        return swept

    # -- reads -----------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        def read(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else self._job_from_row(conn, row)

        return await self._read(read)

    async def find_request(self, tenant: str, request_id: str, now: float) -> tuple[Job, str] | None:
        def read(conn: sqlite3.Connection) -> tuple[Job, str] | None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND request_id = ? AND request_id != '' "
                "AND (expires IS NULL OR expires > ?)",
                (tenant, request_id, now),
            ).fetchone()
            return None if row is None else (self._job_from_row(conn, row), str(row["request_hash"]))

        return await self._read(read)

    async def revisions_after(self, job_id: str, after: int, whole: bool = True) -> list[tuple[Job, int]]:
        def read(conn: sqlite3.Connection) -> list[tuple[Job, int]]:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return []
            base = self._job_from_row(conn, row)
            revs = conn.execute(
                "SELECT revision, state, progress, started, finished, expires, error, queue_position, segment_count, attempt "
                "FROM revisions WHERE job_id = ? AND revision >= ? ORDER BY revision",
                (job_id, after),
            ).fetchall()
            jobs = []
            offset = 0  # the segments the caller has: those of revision `after`
            for rev in revs:
                revision, count, error = rev["revision"], rev["segment_count"], rev["error"]
                if revision == after:
                    offset = count
                    continue
                jobs.append((
                    Job(
                        id=base.id, tenant=base.tenant, route=base.route, state=JobState(rev["state"]),
                        revision=revision, created=base.created, progress=rev["progress"], started=rev["started"],
                        finished=rev["finished"], expires=rev["expires"], labels=base.labels,
                        error=JobFailure.from_dict(json.loads(error)) if error else None,
                        segments=base.segments[:count] if whole else base.segments[offset:count],
                        queue_position=rev["queue_position"],
                        request_id=base.request_id, webhook=base.webhook, logs=base.logs,
                        queue_timeout=base.queue_timeout, run_timeout=base.run_timeout, priority=base.priority,
                        retry_of=base.retry_of, attempt=rev["attempt"],
                    ),
                    offset,
                ))
                offset = count
            return jobs

        return await self._read(read)

    async def get_result(self, job_id: str) -> Result | None:
        def read(conn: sqlite3.Connection) -> Result | None:
            row = conn.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None or row["result"] is None else decode_result(row["result"])

        return await self._read(read)

    async def get_payload(self, job_id: str) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT payload FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["payload"] is not None:
                return bytes(row["payload"])
            row = conn.execute("SELECT data FROM payloads WHERE job_id = ?", (job_id,)).fetchone()
            return None if row is None else bytes(row["data"])

        return await self._read(read)

    async def queue_deadlines_due(self, now: float, limit: int = 100) -> list[str]:
        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT id FROM jobs WHERE state = 1 AND queue_timeout > 0 AND created + queue_timeout <= ? "
                                "LIMIT ?", (now, limit)).fetchall()
            return [row["id"] for row in rows]

        return await self._read(read)

    async def put_upload(self, job_id: str, path: Path) -> None:
        await asyncio.to_thread(self._uploads.put, job_id, path)

    async def open_upload(self, job_id: str) -> tuple[Path, bool] | None:
        path = self._uploads.path(job_id)
        return (path, False) if path.is_file() else None  # the kept file itself: the caller reads it in place

    async def drop_upload(self, job_id: str) -> None:
        await asyncio.to_thread(self._uploads.drop, job_id)

    async def list_jobs(self, tenant: str, flt: JobFilter, before_id: str | None, limit: int, now: float) -> list[Job]:
        sql = [f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND (expires IS NULL OR expires > ?)"]
        args: list[Any] = [tenant, now]
        if before_id:
            sql.append("AND id < ?")
            args.append(before_id)
        _filter_sql(flt, sql, args)
        sql.append("ORDER BY id DESC LIMIT ?")
        args.append(limit)
        query = " ".join(sql)

        def read(conn: sqlite3.Connection) -> list[Job]:
            return [self._job_from_row(conn, row, with_segments=False) for row in conn.execute(query, args)]

        return await self._read(read)

    async def changed_since(
        self, tenant: str, flt: JobFilter, position: int, limit: int, now: float
    ) -> list[tuple[Job, int]]:
        sql = [f"SELECT {_JOB_COLUMNS}, position FROM jobs WHERE tenant = ? AND position > ? "
               "AND (expires IS NULL OR expires > ?)"]
        args: list[Any] = [tenant, position, now]
        _filter_sql(flt, sql, args)
        sql.append("ORDER BY position LIMIT ?")
        args.append(limit)
        query = " ".join(sql)

        def read(conn: sqlite3.Connection) -> list[tuple[Job, int]]:
            return [(self._job_from_row(conn, row, with_segments=False), row["position"])
                    for row in conn.execute(query, args)]

        return await self._read(read)

    async def active_jobs(self, tenant: str) -> list[tuple[Job, int]]:
        def read(conn: sqlite3.Connection) -> list[tuple[Job, int]]:
            query = f"SELECT {_JOB_COLUMNS}, position FROM jobs WHERE tenant = ? AND state IN (1, 2) ORDER BY position"
            return [(self._job_from_row(conn, row, with_segments=False), int(row["position"]))
                    for row in conn.execute(query, (tenant,))]

        return await self._read(read)

    def current_position(self) -> int:
        return self._position

    async def unfinished(self) -> list[ResumableJob]:
        def read(conn: sqlite3.Connection) -> list[ResumableJob]:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN (1, 2) ORDER BY id").fetchall()
            return [self._resumable_from_row(conn, row) for row in rows]

        return await self._read(read)

    async def resumable(self, job_id: str) -> ResumableJob | None:
        def read(conn: sqlite3.Connection) -> ResumableJob | None:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            return self._resumable_from_row(conn, row)

        return await self._read(read)

    async def tombstone(self, job_id: str, now: float) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT tenant FROM tombstones WHERE job_id = ? AND until > ?", (job_id, now)).fetchone()
            return None if row is None else str(row["tenant"])

        return await self._read(read)


    # -- webhooks --------------------------------------------------------------------------------

    async def webhooks_due(self, now: float, limit: int, offset: int = 0) -> list[tuple[str, str]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT job_id, url FROM webhooks WHERE due IS NOT NULL AND due <= ? ORDER BY due LIMIT ? OFFSET ?",
                (now, limit, offset),
            ).fetchall()
            return [(str(r["job_id"]), str(r["url"])) for r in rows]

        return await self._read(read)

    async def webhook_next_due(self) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT MIN(due) AS due FROM webhooks WHERE due IS NOT NULL").fetchone()
            return None if row is None or row["due"] is None else float(row["due"])

        return await self._read(read)

    async def claim_webhook(self, job_id: str, now: float, lease_until: float) -> WebhookClaim | None:
        def write(conn: sqlite3.Connection) -> WebhookClaim | None:
            row = conn.execute("SELECT pending, due, lease, state FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or row["due"] is None or row["due"] > now or row["lease"] > now:
                return None
            conn.execute("UPDATE webhooks SET lease = ?, due = ? WHERE job_id = ?", (lease_until, lease_until, job_id))
            state = row["state"]
            return WebhookClaim(job_id, int(row["pending"]), json.loads(state) if state else {}, lease_until)

        claim: WebhookClaim | None = await self._submit(write)
        return claim

    async def finish_webhook(self, job_id: str, state: Mapping[str, Any], examined: int, due_if_marked: float,
                             due: float | None, lease: float) -> bool:
        data = _dumps(dict(state))
        stored: bool = await self._submit(lambda conn: conn.execute(
            "UPDATE webhooks SET state = ?, lease = 0, due = CASE WHEN pending > ? THEN ? ELSE ? END "
            "WHERE job_id = ? AND lease = ?",
            (data, examined, due_if_marked, due, job_id, lease),
        ).rowcount == 1)
        return stored

    async def webhook_state(self, job_id: str) -> dict[str, Any] | None:
        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT state FROM webhooks WHERE job_id = ?", (job_id,)).fetchone()
            return json.loads(row["state"]) if row and row["state"] else None

        return await self._read(read)


def _conflict(conn: sqlite3.Connection, params: Sequence[Any]) -> RevisionConflict:
    job_id, expected, attempt = params[14], params[15], params[16]
    row = conn.execute("SELECT revision, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return RevisionConflict(f"job {job_id} is gone")
    return RevisionConflict(
        f"job {job_id} is at revision {row['revision']} (attempt {row['attempts']}), not {expected}"
        + ("" if attempt < 0 else f" (attempt {attempt})")
    )


def _filter_sql(flt: JobFilter, sql: list[str], args: list[Any]) -> None:
    """Appends the filter's conditions (state, route, labels) to a query on jobs."""
    if flt.states:
        sql.append(f"AND state IN ({','.join('?' * len(flt.states))})")
        args.extend(sorted(int(s) for s in flt.states))
    if flt.route:
        sql.append("AND route = ?")
        args.append(flt.route)
    for key, value in sorted(flt.labels.items()):
        sql.append("AND json_extract(labels, ?) = ?")
        args.extend((f'$."{key}"', value))

