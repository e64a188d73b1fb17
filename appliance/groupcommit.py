"""Group commit for hot write paths: many small requests, one transaction (and one fsync) per batch.

A boot storm sends hundreds of iPXE-script fetches and discovery reports at once; each is a handful of
statements, and done one transaction apiece they queue behind SQLite's single writer and its fsync.
Here a worker thread takes up to `max_items` pieces of work (or what arrives within `max_wait`), runs
each in its own SAVEPOINT — so one bad report fails alone and leaves nothing half-written — then runs
the batch's deferred set-based steps (binding every new node's roles in one call) and commits once.
`submit()` returns only after that commit, so a caller never answers before its write is durable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from appliance.db import Database

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batch:
    """What the work of one transaction shares: steps deferred to run once for the whole batch."""

    def __init__(self) -> None:
        self.deferred: dict[str, tuple[Callable[[Session, list[Any]], None], list[Any]]] = {}

    def defer(self, key: str, action: Callable[[Session, list[Any]], None], item: Any) -> None:
        """Run `action(session, [item, ...])` once, after every piece of work of this batch."""
        self.deferred.setdefault(key, (action, []))[1].append(item)

    def _mark(self) -> dict[str, int]:
        return {key: len(items) for key, (_action, items) in self.deferred.items()}

    def _rollback_to(self, mark: dict[str, int]) -> None:
        # a piece of work that failed after deferring must not leave its items behind
        for key, (_action, items) in self.deferred.items():
            del items[mark.get(key, 0) :]


@dataclass
class _Item(Generic[T]):
    work: Callable[[Session, Batch], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, db: Database, *, max_items: int = 64, max_wait: float = 0.002) -> None:
        self.db = db
        self.max_items = max_items
        self.max_wait = max_wait
        self._queue: queue.Queue[_Item[Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.items = 0

    def submit(self, work: Callable[[Session, Batch], T], *, timeout: float = 120.0) -> T:
        """Run `work(session, batch)` in the next batch; its result once committed, or its exception."""
        self._ensure_worker()
        item: _Item[T] = _Item(work)
        self._queue.put(item)
        if not item.done.wait(timeout):
            raise TimeoutError("group commit did not finish in time")
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kiln-group-commit", daemon=True)
                self._thread.start()

    def _take(self) -> list[_Item[Any]]:
        items = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_items:
            remaining = deadline - time.monotonic()
            try:
                items.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            try:
                self._commit(items)
            except BaseException as exc:  # the whole transaction failed: every caller hears why
                log.warning("group commit of %d items failed: %s", len(items), exc)
                for item in items:
                    if item.error is None:
                        item.error = exc
            finally:
                self.batches += 1
                self.items += len(items)
                for item in items:
                    item.done.set()

    def _commit(self, items: list[_Item[Any]]) -> None:
        batch = Batch()
        with self.db.session() as session:
            for item in items:
                mark = batch._mark()
                try:
                    with session.begin_nested():
                        item.result = item.work(session, batch)
                except Exception as exc:
                    batch._rollback_to(mark)
                    item.error = exc
            for action, collected in batch.deferred.values():
                if collected:
                    action(session, collected)
