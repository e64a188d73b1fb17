"""Group commit (the write path of /boot/ipxe and POST /discovery): batching without entanglement."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.db import Database
from appliance.errors import Conflict
from appliance.groupcommit import Batch, GroupCommit
from appliance.models import Event


def _events(db: Database) -> list[str]:
    """The events these tests wrote (the database's own seed loaded the core barclamp first)."""
    with db.read_session() as s:
        return list(s.scalars(select(Event.action).where(Event.action != "barclamp.load").order_by(Event.id)))


def _write(action: str, fail: bool = False, defer: list[Any] | None = None):  # type: ignore[no-untyped-def]
    def work(s: Session, batch: Batch) -> str:
        s.add(Event(action=action, data={}))
        if defer is not None:
            batch.defer("collect", lambda _s, items: defer.extend(items), action)
        s.flush()
        if fail:
            raise Conflict(f"{action} refused")
        return action

    return work


def test_concurrent_submissions_share_transactions_and_each_gets_its_own_result(sqlite_db: Database) -> None:
    group = GroupCommit(sqlite_db, max_items=64, max_wait=0.05)
    results: dict[int, str] = {}
    start = threading.Barrier(40)

    def submit(i: int) -> None:
        start.wait()
        results[i] = group.submit(_write(f"e{i}"))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: f"e{i}" for i in range(40)}
    assert sorted(_events(sqlite_db)) == sorted(f"e{i}" for i in range(40))
    assert group.batches < 40  # they were grouped, not one transaction each


def test_a_failing_piece_of_work_is_rolled_back_alone_and_its_deferred_items_dropped(
    sqlite_db: Database,
) -> None:
    group = GroupCommit(sqlite_db, max_items=8, max_wait=0.2)
    collected: list[Any] = []
    outcomes: dict[str, object] = {}
    start = threading.Barrier(3)

    def submit(name: str, fail: bool) -> None:
        start.wait()
        try:
            outcomes[name] = group.submit(_write(name, fail, collected))
        except Conflict as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=submit, args=("good1", False)),
        threading.Thread(target=submit, args=("bad", True)),
        threading.Thread(target=submit, args=("good2", False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes["good1"] == "good1" and outcomes["good2"] == "good2"
    assert isinstance(outcomes["bad"], Conflict)
    assert sorted(_events(sqlite_db)) == ["good1", "good2"]
    assert sorted(collected) == ["good1", "good2"]


def test_a_failing_batch_step_fails_every_caller_of_the_batch_and_writes_nothing(sqlite_db: Database) -> None:
    group = GroupCommit(sqlite_db)

    def work(s: Session, batch: Batch) -> None:
        s.add(Event(action="never", data={}))
        batch.defer("boom", lambda _s, _items: (_ for _ in ()).throw(RuntimeError("batch step failed")), 1)

    with pytest.raises(RuntimeError, match="batch step failed"):
        group.submit(work)
    with sqlite_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.action != "barclamp.load")) == 0
    # the worker survives and serves the next submission
    assert group.submit(_write("after")) == "after"
