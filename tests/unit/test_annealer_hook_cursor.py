"""Role hooks run once per event across every annealer of a database, also for events recorded while
no annealer ran (the cursor lives in the hook_cursor row, appliance.annealer.hooks.HookRunner)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from appliance.annealer import deployments, hooks
from appliance.annealer.runner import Annealer
from appliance.db import Database, create_database
from appliance.db.migrate import upgrade_schema
from appliance.events import record
from appliance.models import Event, HookCursor
from tests.pgserver import PostgresServer
from tests.unit import hook_targets
from tests.unit.annealer_world import load, make_nodes, node_role

ROLE = "hc-role"


class Died(BaseException):
    """Stands for the annealer process dying inside a hook: nothing in the runner catches it."""


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    hook_targets.CALLS.clear()
    yield
    for role in (ROLE, "hc-ok"):
        hooks.unregister_role(role)
    hook_targets.CALLS.clear()


def _created(db: Database, count: int) -> list[int]:
    """`count` node.create events (what discovery and the API record); returns their node ids."""
    ids = make_nodes(db, count, prefix=f"c{time.monotonic_ns()}-")
    with db.session() as session:
        for node_id in ids:
            record(session, "node.create", subject_type="node", subject_id=node_id)
    return ids


def _cursor(db: Database) -> HookCursor:
    with db.read_session() as session:
        row = session.get(HookCursor, 1)
        assert row is not None
        return row


def _last_event(db: Database) -> int:
    with db.read_session() as session:
        return session.scalar(select(func.max(Event.id))) or 0


def _drain(runner: hooks.HookRunner, db: Database, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _cursor(db).last_event_id < _last_event(db):
        assert time.monotonic() < deadline, "hook cursor did not reach the log's end"
        runner.poll()


def test_two_runners_polling_at_once_call_each_hook_exactly_once(db: Database) -> None:
    hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
    node_ids = _created(db, 60)
    end = _last_event(db)
    runners = [hooks.HookRunner(db, f"annealer-{i}", gap_seconds=1.0) for i in range(2)]
    errors: list[BaseException] = []

    def follow(runner: hooks.HookRunner) -> None:
        deadline = time.monotonic() + 30
        try:
            while _cursor(db).last_event_id < end and time.monotonic() < deadline:
                runner.poll(limit=4)  # small windows: the two runners contend for many of them
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=follow, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _cursor(db).last_event_id == end
    seen = Counter(c.node_id for c in hook_targets.CALLS)
    assert seen == Counter(node_ids)  # every node once, none twice
    assert {c.event for c in hook_targets.CALLS} == {"on_node_create"}


def test_events_recorded_while_no_annealer_ran_fire_when_one_starts(db: Database) -> None:
    hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
    node_ids = _created(db, 3)  # no runner exists yet
    runner = hooks.HookRunner(db, "late-annealer")
    _drain(runner, db)
    assert sorted(c.node_id for c in hook_targets.CALLS) == sorted(node_ids)
    # a second runner started later finds nothing left to do
    hook_targets.CALLS.clear()
    assert hooks.HookRunner(db, "later-still").poll() == 0
    assert hook_targets.CALLS == []


def test_a_window_whose_annealer_died_runs_again_on_another_after_its_lease(db: Database) -> None:
    dying_calls: list[int | None] = []

    def die(call: hooks.HookCall) -> None:
        dying_calls.append(call.node_id)
        raise Died

    hooks.register_hook(ROLE, "on_node_create", die)
    node_ids = _created(db, 2)
    doomed = hooks.HookRunner(db, "doomed", lease_seconds=0.5)
    with pytest.raises(Died):
        doomed.poll()
    assert _cursor(db).claimed_by == "doomed"
    hooks.unregister_role(ROLE)
    hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
    survivor = hooks.HookRunner(db, "survivor")
    assert survivor.poll() == 0  # the claim is still live: the survivor does not run the window too
    assert hook_targets.CALLS == []
    deadline = time.monotonic() + 10
    while not hook_targets.CALLS:
        assert time.monotonic() < deadline, "the dead annealer's window was never taken over"
        survivor.poll()
    # at-least-once: the event whose hook was running when the annealer died is seen again
    assert dying_calls == [node_ids[0]]
    assert sorted(c.node_id for c in hook_targets.CALLS) == sorted(node_ids)
    cursor = _cursor(db)
    assert cursor.claimed_by is None and cursor.last_event_id == _last_event(db)


def test_migration_starts_the_cursor_at_the_log_end_so_history_fires_no_hooks(db_url: str) -> None:
    old = create_database(db_url, upgrade=False)
    try:
        upgrade_schema(old, "0004_webhook_deliveries")
        with old.session() as session:
            for i in range(3):
                record(session, "node.create", subject_type="node", subject_id=1000 + i)
        history_end = _last_event(old)
        upgrade_schema(old)
        assert _cursor(old).last_event_id == history_end
        hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
        fresh = _created(old, 1)
        _drain(hooks.HookRunner(old, "after-upgrade"), old)
        assert [c.node_id for c in hook_targets.CALLS] == fresh
    finally:
        old.dispose()


def test_without_hooks_the_cursor_still_moves_so_later_hooks_get_no_backlog(db: Database) -> None:
    _created(db, 2)
    runner = hooks.HookRunner(db, "no-hooks")
    runner.poll()
    assert _cursor(db).last_event_id == _last_event(db)
    hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
    assert runner.poll() == 0
    assert hook_targets.CALLS == []


HOOKED = """\
roles:
  - name: hc-ok
    hooks: {on_todo: "tests.unit.hook_targets:record_call", on_active: "tests.unit.hook_targets:record_call"}
"""


def test_two_annealers_on_one_database_run_each_node_role_hook_once(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, HOOKED)
    nodes = make_nodes(db, 6)
    with db.session() as session:
        deployment = deployments.create(session, "d")
        deployments.add_nodes(session, deployment, nodes, ["hc-ok"])
        deployments.commit(session, deployment)
    annealers = [Annealer(db, lease_seconds=60, backoff_seconds=0.05) for _ in range(2)]
    errors: list[BaseException] = []

    def run(annealer: Annealer) -> None:
        try:
            annealer.run_until_idle(timeout=60)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in annealers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for a in annealers:
            a.close()
    assert not errors
    ids = [node_role(db, f"n{i}.test", "hc-ok").id for i in range(6)]
    seen = Counter((c.event, c.node_role_id) for c in hook_targets.CALLS)
    assert seen == Counter([("on_todo", i) for i in ids] + [("on_active", i) for i in ids])


def test_on_postgresql_a_newer_event_waits_for_an_older_id_still_being_committed(
    postgres: PostgresServer,
) -> None:
    db = create_database(postgres.create_database(f"kiln_hc_{os.getpid()}_{time.monotonic_ns()}"))
    try:
        hooks.register_hook(ROLE, "on_node_create", hook_targets.record_call)
        first, second = make_nodes(db, 2, prefix="gap")
        runner = hooks.HookRunner(db, "gap-watcher", gap_seconds=30)
        slow = db.sessionmaker()
        try:
            with slow.begin():
                # this transaction takes its event id first and commits last
                record(slow, "node.create", subject_type="node", subject_id=first)
                slow.flush()
                with db.session() as session:
                    record(session, "node.create", subject_type="node", subject_id=second)
                assert runner.poll() == 0  # the hole before the committed event is young: wait
                assert hook_targets.CALLS == []
        finally:
            slow.close()
        _drain(runner, db)
        assert [c.node_id for c in hook_targets.CALLS] == [first, second]
    finally:
        db.dispose()


def _follow_in_process(url: str, name: str, end: int, out: str, start: Any) -> None:
    """One annealer process's hook runner, until the cursor reaches `end`; each call appends a line."""

    def append(call: hooks.HookCall) -> None:
        with open(out, "a") as f:  # one short O_APPEND write per call: lines never interleave
            f.write(f"{call.node_id}\n")
        time.sleep(0.002)  # a hook that takes a moment: the other process polls meanwhile

    database = Database(url)
    try:
        hooks.register_hook(ROLE, "on_node_create", append)
        runner = hooks.HookRunner(database, name, gap_seconds=1.0)
        start.wait(30)  # both processes start polling together, whatever their start-up took
        deadline = time.monotonic() + 60
        while _cursor(database).last_event_id < end and time.monotonic() < deadline:
            runner.poll(limit=3)
    finally:
        database.dispose()


def test_two_annealer_processes_call_each_hook_exactly_once(db: Database, tmp_path: Path) -> None:
    node_ids = _created(db, 60)
    end = _last_event(db)
    out = tmp_path / "calls.txt"
    out.touch()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_follow_in_process, args=(db.url, f"proc-{i}", end, str(out), start))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0, 0]
    assert _cursor(db).last_event_id == end
    assert Counter(int(line) for line in out.read_text().split()) == Counter(node_ids)
