"""Engine and session factory. SQLite runs in WAL mode; PostgreSQL is used as given by URL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL + WAL loses no committed transaction on process death; FULL also survives power loss,
    # which is what "every ACKed lease fsync'd" asks for.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # pysqlite's own BEGIN is deferred and lazily issued; an explicit BEGIN IMMEDIATE takes the write
    # lock up front so two writers never deadlock on a read-then-write upgrade. Read-only sessions
    # (Database.read_session) begin deferred so they never wait for a writer in WAL mode.
    if conn.get_execution_options().get("kiln_read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


BUSY_TIMEOUT_SECONDS = 30

_write_locks: dict[str, threading.RLock] = {}
_write_locks_guard = threading.Lock()


def _write_lock(path: str) -> threading.RLock:
    """One lock per SQLite file for this process's writers.

    SQLite's busy handler polls with sleeps and is not fair: under load one thread can lose every race
    for BEGIN IMMEDIATE until its busy timeout expires (seen with 16 allocating threads on a loaded
    2-core machine). Writers of one process queue on this lock instead and are woken in turn; other
    processes still arbitrate through SQLite itself.
    """
    with _write_locks_guard:
        return _write_locks.setdefault(path, threading.RLock())


class Database:
    """An engine plus a session factory; one per process, passed in, never global."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: threading.RLock | None = None
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._write_lock = _write_lock(str(Path(path).resolve()))
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": BUSY_TIMEOUT_SECONDS,
                "isolation_level": None,
            }
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessionmaker = sessionmaker(
            self.engine.execution_options(kiln_read_only=True), expire_on_commit=False
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        lock = self._write_lock
        # past the busy timeout, go on anyway: SQLite then reports "database is locked" as before
        locked = lock.acquire(timeout=BUSY_TIMEOUT_SECONDS) if lock is not None else False
        session = self.sessionmaker()
        try:
            with session.begin():
                yield session
        finally:
            session.close()
            if locked and lock is not None:
                lock.release()

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only; on SQLite it never takes the write lock."""
        session = self.read_sessionmaker()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def create_database(url: str, *, upgrade: bool = True) -> Database:
    """Open the database and bring its schema to the newest migration."""
    db = Database(url)
    if upgrade:
        from appliance.db.migrate import upgrade_schema

        upgrade_schema(db)
    return db
