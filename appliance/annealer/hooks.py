"""Role hooks (OpenCrowbar's on_todo, on_active, ...): Python callables a barclamp attaches to a role.

Hooks run in the annealer, never in a web request or a claim transaction: the annealers follow the
Event log past a cursor kept in the database (table hook_cursor, see HookRunner) and call the hooks of
the roles involved, each event's hooks once across all annealers. The cursor starts where the log
stood when migration 0005 ran, and it moves on even while no hook is registered (a few writes a
minute): hooks react to what happens from now on, a barclamp that brings hooks later is not handed
the log's history. A hook's exception is logged and written as a
`role.hook_error` Event; it never stops the annealer.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Table, or_, select, update

from appliance.db import Database
from appliance.events import IdGaps, record
from appliance.models import Event, HookCursor, NodeRole, Role, utcnow

log = logging.getLogger(__name__)

EVENTS = frozenset({"on_todo", "on_active", "on_error", "on_node_create", "on_node_change", "on_commit"})
# node-role state entered -> hook
STATE_HOOKS = {"todo": "on_todo", "active": "on_active", "error": "on_error"}
NODE_CREATE_ACTIONS = ("node.create", "node.discovered")
NODE_CHANGE_ACTIONS = ("node.update", "node.rediscovered", "node.discovery")
CURSOR_ID = 1
cursor_t = cast(Table, HookCursor.__table__)
WATCHED = ("noderole.state", "deployment.commit", *NODE_CREATE_ACTIONS, *NODE_CHANGE_ACTIONS)


@dataclass(frozen=True)
class HookCall:
    """What a hook receives: the event, the role, and the node-role / node / deployment involved."""

    event: str
    role: str
    node_role_id: int | None = None
    node_id: int | None = None
    deployment_id: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


Hook = Callable[[HookCall], Any]

_hooks: dict[tuple[str, str], list[Hook]] = {}


def register_hook(role_name: str, event: str, func: Hook) -> None:
    """Attach `func` to `event` of `role_name` (registering the same callable twice is a no-op)."""
    if event not in EVENTS:
        raise ValueError(f"unknown hook event '{event}' (one of {sorted(EVENTS)})")
    funcs = _hooks.setdefault((role_name, event), [])
    if func not in funcs:
        funcs.append(func)


def unregister_role(role_name: str) -> None:
    for key in [k for k in _hooks if k[0] == role_name]:
        del _hooks[key]


def hooks_for(role_name: str, event: str) -> list[Hook]:
    return list(_hooks.get((role_name, event), ()))


def any_registered() -> bool:
    return any(_hooks.values())


def resolve(target: str) -> Hook:
    """'package.module:function' -> the callable; ValueError says why not."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"hook target '{target}' must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure refuses the barclamp with its reason
        raise ValueError(f"cannot import '{module_name}': {type(exc).__name__}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"'{module_name}' has no callable '{attr}'")
    return func  # type: ignore[no-any-return]


def _aware(at: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes for what was written as UTC
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def register_targets(role_name: str, targets: Mapping[str, str]) -> None:
    for event, target in targets.items():
        register_hook(role_name, event, resolve(target))


class HookRunner:
    """Runs the hooks of the Event log's events, each event's once across every annealer of the database.

    The position lives in the `hook_cursor` row, not in this process: events recorded while no
    annealer ran fire when one starts. A runner claims the window (last_event_id, upto] by a
    compare-and-set on that row (one UPDATE: SQLite serialises it under BEGIN IMMEDIATE, PostgreSQL
    re-checks the WHERE after the row lock), runs the window's hooks after that commit, renewing its
    lease as it goes, and only then moves last_event_id. While a live claim stands, other runners wait.

    Delivery is at-least-once: if an annealer dies mid-window (or a single hook outlasts the lease),
    the lease runs out and another annealer runs the whole window again, so a hook may see an event a
    second time then; hooks should be idempotent. In normal running every hook call happens once.

    A window never passes an event id that may still be committing (PostgreSQL; events.IdGaps): an
    event committed more than `gap_seconds` after a newer one misses its hooks.
    """

    def __init__(
        self,
        db: Database,
        actor: str,
        *,
        lease_seconds: float = 60.0,
        gap_seconds: float = 5.0,
        skip_interval: float = 5.0,
    ) -> None:
        self.db = db
        self.actor = actor
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.gaps = IdGaps(ordered=db.is_sqlite, gap_seconds=gap_seconds)
        # with no hook to call, moving the cursor is the only work: a write, so not on every step
        self.skip_interval = skip_interval
        self._last_skip = 0.0

    def poll(self, limit: int = 500) -> int:
        """Claim the next window of events, run its hooks, move the cursor; returns hooks called."""
        if not any_registered() and time.monotonic() - self._last_skip < self.skip_interval:
            return 0  # nothing to call: not even a read on every annealer step
        with self.db.read_session() as session:
            row = session.execute(
                select(HookCursor.last_event_id, HookCursor.claimed_by, HookCursor.lease_expires_at).where(
                    HookCursor.id == CURSOR_ID
                )
            ).first()
            if row is None:
                raise RuntimeError("hook_cursor row missing: run `kiln db upgrade`")
            last, holder, expires = row
            if holder is not None and expires is not None and _aware(expires) > utcnow():
                return 0  # another annealer is running a window
            ids = list(
                session.scalars(select(Event.id).where(Event.id > last).order_by(Event.id).limit(limit))
            )
            if not ids:
                return 0
            upto = self.gaps.settled(last, ids)
            if upto <= last:
                return 0
            calls: list[tuple[Hook, HookCall]] = []
            if any_registered():
                events = session.execute(
                    select(Event.id, Event.action, Event.subject_id, Event.data)
                    .where(Event.id > last, Event.id <= upto, Event.action.in_(WATCHED))
                    .order_by(Event.id)
                )
                calls = list(self._calls(session, events))
        if not calls:
            # nothing to call: moving the cursor is a write, so not on every annealer step
            now = time.monotonic()
            if len(ids) < limit and now - self._last_skip < self.skip_interval:
                return 0
            self._last_skip = now
            self._move(last, upto, claimed_by=None)
            return 0
        if not self._claim(last, upto):
            return 0  # another annealer claimed this window first
        renewed = time.monotonic()
        for hook, call in calls:
            if time.monotonic() - renewed > self.lease.total_seconds() / 2:
                if not self._renew(last, upto):
                    log.warning("hook window (%d, %d] taken over after its lease ran out", last, upto)
                    return 0
                renewed = time.monotonic()
            self._run(hook, call)
        self._move(last, upto, claimed_by=self.actor)
        return len(calls)

    def _claim(self, last: int, upto: int) -> bool:
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                update(cursor_t)
                .where(
                    cursor_t.c.id == CURSOR_ID,
                    cursor_t.c.last_event_id == last,
                    or_(cursor_t.c.claimed_by.is_(None), cursor_t.c.lease_expires_at <= now),
                )
                .values(claimed_by=self.actor, claimed_upto=upto, lease_expires_at=now + self.lease)
            )
            return _rowcount(result) == 1

    def _renew(self, last: int, upto: int) -> bool:
        with self.db.session() as session:
            result = session.execute(
                update(cursor_t).where(*self._mine(last, upto)).values(lease_expires_at=utcnow() + self.lease)
            )
            return _rowcount(result) == 1

    def _move(self, last: int, upto: int, *, claimed_by: str | None) -> None:
        """last -> upto, releasing the claim; a no-op if the window is no longer this runner's."""
        if claimed_by is None:
            unclaimed = or_(cursor_t.c.claimed_by.is_(None), cursor_t.c.lease_expires_at <= utcnow())
            where = [cursor_t.c.id == CURSOR_ID, cursor_t.c.last_event_id == last, unclaimed]
        else:
            where = self._mine(last, upto)
        with self.db.session() as session:
            session.execute(
                update(cursor_t)
                .where(*where)
                .values(last_event_id=upto, claimed_by=None, claimed_upto=None, lease_expires_at=None)
            )

    def _mine(self, last: int, upto: int) -> list[Any]:
        return [
            cursor_t.c.id == CURSOR_ID,
            cursor_t.c.last_event_id == last,
            cursor_t.c.claimed_by == self.actor,
            cursor_t.c.claimed_upto == upto,
        ]

    def _calls(self, session: Any, events: Iterable[Any]) -> Iterable[tuple[Hook, HookCall]]:
        for _, action, subject_id, data in events:
            data = data or {}
            if action == "noderole.state":
                event = STATE_HOOKS.get(data.get("to", ""))
                if event is None or subject_id is None:
                    continue
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.id == subject_id)
                )
            elif action == "deployment.commit":
                event = "on_commit"
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.deployment_id == subject_id)
                )
            elif action in NODE_CREATE_ACTIONS:
                # a new node has no node-roles yet: every role with the hook hears of it
                for role_name, hook_event in list(_hooks):
                    if hook_event == "on_node_create":
                        for hook in hooks_for(role_name, hook_event):
                            yield hook, HookCall(hook_event, role_name, node_id=subject_id, data=data)
                continue
            else:
                event = "on_node_change"
                rows = session.execute(
                    select(NodeRole.id, NodeRole.node_id, NodeRole.deployment_id, Role.name)
                    .join(Role, Role.id == NodeRole.role_id)
                    .where(NodeRole.node_id == subject_id)
                )
            for nr_id, node_id, deployment_id, role_name in rows:
                for hook in hooks_for(role_name, event):
                    yield hook, HookCall(event, role_name, nr_id, node_id, deployment_id, data)

    def _run(self, hook: Hook, call: HookCall) -> None:
        try:
            hook(call)
        except Exception as exc:  # a barclamp's bug is reported, never fatal to the annealer
            message = f"{type(exc).__name__}: {exc}"
            log.exception("hook %s of role %s failed", call.event, call.role)
            with self.db.session() as session:
                record(
                    session,
                    "role.hook_error",
                    subject_type="node_role" if call.node_role_id else "role",
                    subject_id=call.node_role_id,
                    actor=self.actor,
                    message=f"{call.role} {call.event}: {message}",
                    data={
                        "role": call.role,
                        "hook": call.event,
                        "node_role_id": call.node_role_id,
                        "message": message,
                    },
                )
