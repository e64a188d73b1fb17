"""The annealer's engine: claim runnable node-roles in batches, run their jigs, write results in batches.

Per batch, whatever its size: one UPDATE … RETURNING claims it (FOR UPDATE SKIP LOCKED on PostgreSQL, so
N annealer processes never claim the same row), three queries gather the inputs, one UPDATE moves the
successes to `active`, one INSERT writes their events and one their run records, and, in a second
transaction after that commit, one UPDATE unblocks the children whose parents are now all active.
Unblocking after the commit matters on PostgreSQL: two annealers finishing the two parents of one child
at the same moment each see the other's parent active only once it is committed, and the later of the
two unblock statements always does.

Jigs that declare themselves `inline` (noop) run in the annealer's thread with no hop; the rest go to
a bounded thread pool, claimed only as workers free up so a slow script never sits on a lease unrun.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from typing import cast as typed

from sqlalchemy import ARRAY, Integer, Table, and_, any_, bindparam, cast, func, or_, select, update

from appliance.annealer import states
from appliance.annealer.barclamps import SCHEMA_TYPES
from appliance.annealer.bulk import dialect_of, ids_value, in_ids, insert_rows
from appliance.annealer.injection import Inputs, gather_inputs
from appliance.db import Database
from appliance.errors import JigError, KilnError
from appliance.jigs import REGISTRY, Jig, NodeRoleContext
from appliance.models import Deployment, Node, NodeRole, NodeRoleEdge, Role, Run, utcnow

log = logging.getLogger(__name__)

_EMPTY: dict[str, Any] = {}  # the inputs and outputs of trivial runs, serialised once per batch

nr_t = typed(Table, NodeRole.__table__)
node_t = typed(Table, Node.__table__)
dep_t = typed(Table, Deployment.__table__)
edge_t = typed(Table, NodeRoleEdge.__table__)
run_t = typed(Table, Run.__table__)


@dataclass(frozen=True)
class RoleInfo:
    id: int
    name: str
    jig: Jig | None
    inputs: Mapping[str, Mapping[str, Any]]
    outputs: Mapping[str, Mapping[str, Any]]
    jig_data: Mapping[str, Any]

    @property
    def trivial(self) -> bool:
        """noop with nothing declared: the result is known without calling anything."""
        return self.jig is not None and self.jig.name == "noop" and not self.inputs and not self.outputs


class Claimed(NamedTuple):  # a tuple: a batch creates a thousand of them
    id: int
    node_id: int
    role_id: int
    deployment_id: int
    attempts: int


@dataclass
class Outcome:
    node_role_id: int
    attempts: int
    inputs: dict[str, Any]
    ok: bool = True
    outputs: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    error: str = ""
    retryable: bool = False
    started_at: dt.datetime = field(default_factory=utcnow)
    finished_at: dt.datetime = field(default_factory=utcnow)


def annealer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def check_types(kind: str, specs: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]) -> None:
    """Values against the declared schema types; a mismatch fails the run before (inputs) or after it."""
    for name, value in values.items():
        expected = (specs.get(name) or {}).get("schema", {}).get("type")
        if value is None or expected not in SCHEMA_TYPES:
            continue
        if not isinstance(value, SCHEMA_TYPES[expected]) or (
            expected in ("integer", "number") and isinstance(value, bool)
        ):
            raise JigError(f"{kind} {name}: expected {expected}, got {type(value).__name__} {value!r}")


def execute_jig(role: RoleInfo, ctx: NodeRoleContext, inputs: Inputs) -> tuple[dict[str, Any], str]:
    """Run one jig; outputs not declared by the role are dropped (and said so in the log)."""
    assert role.jig is not None
    check_types("input", role.inputs, inputs.to_dict())
    role.jig.validate(ctx, inputs)
    outputs = dict(role.jig.run(ctx, inputs))
    runlog = str(outputs.pop("_log", ""))
    extra = sorted(set(outputs) - set(role.outputs))
    if extra:
        runlog += f"\nundeclared outputs dropped: {', '.join(extra)}"
        outputs = {k: v for k, v in outputs.items() if k in role.outputs}
    try:
        check_types("output", role.outputs, outputs)
    except JigError as exc:
        raise JigError(exc.message, log=runlog) from exc
    return outputs, runlog


class Annealer:
    """One annealer process's engine. `step()` does one round; `service.serve` loops it."""

    def __init__(
        self,
        db: Database,
        *,
        name: str | None = None,
        workers: int = 8,
        batch: int = 1000,
        lease_seconds: float = 300.0,
        retry_limit: int = 5,
        backoff_seconds: float = 2.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.db = db
        self.name = name or annealer_name()
        self.workers = max(1, workers)
        self.batch = max(1, batch)
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.retry_limit = retry_limit
        self.backoff_seconds = backoff_seconds
        self.backoff_max = backoff_max
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="jig")
        self.inflight: dict[int, Future[Outcome]] = {}
        self.done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.roles: dict[int, RoleInfo] = {}
        self._trivial_roles: frozenset[int] = frozenset()
        self.completed = 0
        self._roles_loaded = 0.0
        self._last_recover = 0.0
        self._last_sweep = 0.0
        self.recover_interval = min(5.0, lease_seconds / 4)
        # inline node-roles claimed in the commit of the previous batch's results, not yet run
        self._next_inline: list[Claimed] = []
        self._last_renew = time.monotonic()

    # -- roles ---------------------------------------------------------------------------------

    def load_roles(self) -> None:
        with self.db.read_session() as session:
            rows = session.execute(
                select(Role.id, Role.name, Role.jig, Role.inputs, Role.outputs, Role.jig_data)
            )
            self.roles = {
                rid: RoleInfo(rid, name, REGISTRY.get(jig), inputs or {}, outputs or {}, jig_data or {})
                for rid, name, jig, inputs, outputs, jig_data in rows
            }
        self._trivial_roles = frozenset(r.id for r in self.roles.values() if r.trivial)
        self._roles_loaded = time.monotonic()

    def _role_ids(self, inline: bool) -> list[int]:
        return [r.id for r in self.roles.values() if r.jig is not None and r.jig.inline == inline]

    # -- claim -----------------------------------------------------------------------------------

    def claim(self, limit: int, role_ids: Sequence[int], session: Any = None) -> list[Claimed]:
        """Atomically move up to `limit` runnable node-roles of these roles to `transition`.

        In `session` when given (the result write of the previous batch), else in its own transaction.
        """
        if limit <= 0 or not role_ids:
            return []
        now = utcnow()
        cand = nr_t.alias("claimable")
        query = (
            select(cand.c.id)
            .select_from(
                cand.join(node_t, node_t.c.id == cand.c.node_id).join(
                    dep_t, dep_t.c.id == cand.c.deployment_id
                )
            )
            .where(
                cand.c.state == states.TODO,
                cand.c.role_id.in_(list(role_ids)),
                node_t.c.alive.is_(True),
                node_t.c.available.is_(True),
                dep_t.c.state == "committed",
                or_(cand.c.retry_at.is_(None), cand.c.retry_at <= now),
            )
            .order_by(cand.c.cohort, cand.c.id)
            .limit(limit)
        )
        if self.inflight:
            query = query.where(cand.c.id.not_in(list(self.inflight)))
        where: Any = nr_t.c.id.in_(query)
        if not self.db.is_sqlite:
            # Evaluated once, handed over as one array, matched by primary key. As IN (subquery)
            # PostgreSQL re-ran the locking subquery for every todo row whenever its statistics were
            # stale (measured: 6.5 s for a batch of 1,000 right after committing 8,000), and joined
            # to a CTE it compared every pair (0.8 s).
            claim = query.with_for_update(skip_locked=True, of=cand).cte("claim").prefix_with("MATERIALIZED")
            ids = cast(select(func.array_agg(claim.c.id)).scalar_subquery(), ARRAY(Integer))  # one array
            where = nr_t.c.id == any_(ids)
        if session is None:
            with self.db.session() as own:
                return self.claim(limit, role_ids, own)
        rows = states.transition_rows(
            session,
            states.TODO,
            states.TRANSITION,
            where=where,
            values={"claimed_by": self.name, "lease_expires_at": now + self.lease},
            returning=(
                nr_t.c.node_id,
                nr_t.c.role_id,
                nr_t.c.deployment_id,
                nr_t.c.attempts,
            ),
            actor=self.name,
            reason="claimed",
        )
        return [Claimed(nr_id, node, role, dep, attempts or 0) for nr_id, node, role, dep, attempts in rows]

    def _inputs(self, claimed: Sequence[Claimed]) -> dict[int, dict[str, Any]]:
        specs = {c.role_id: self.roles[c.role_id].inputs for c in claimed}
        if not any(specs.values()):
            return {c.id: {} for c in claimed}
        with self.db.read_session() as session:
            return gather_inputs(
                session, [(c.id, c.node_id, c.role_id, c.deployment_id) for c in claimed], specs
            )

    # -- run ---------------------------------------------------------------------------------------

    def _context(self, c: Claimed, node: tuple[str, Mapping[str, Any]] | None = None) -> NodeRoleContext:
        role = self.roles[c.role_id]
        name, hint = node or ("", {})
        return NodeRoleContext(
            id=c.id,
            node_id=c.node_id,
            node_name=name,
            role=role.name,
            deployment_id=c.deployment_id,
            jig_data=role.jig_data,
            outputs=role.outputs,
            access=(hint or {}).get("ssh", {}),
        )

    def _run_one(self, c: Claimed, inputs: dict[str, Any], ctx: NodeRoleContext) -> Outcome:
        role = self.roles[c.role_id]
        outcome = Outcome(c.id, c.attempts, inputs)
        try:
            outcome.outputs, outcome.log = execute_jig(role, ctx, Inputs(inputs, role.name))
        except JigError as exc:
            outcome.ok, outcome.error, outcome.retryable = False, exc.message, exc.retryable
            outcome.log = exc.log
        except KilnError as exc:
            outcome.ok, outcome.error = False, exc.message
        except Exception as exc:  # a jig bug must become an `error` node-role, never a dead annealer
            outcome.ok, outcome.error = False, f"{type(exc).__name__}: {exc}"
            outcome.log = traceback.format_exc()
        outcome.finished_at = utcnow()
        return outcome

    def run_inline(self, claimed: Sequence[Claimed]) -> tuple[list[Outcome], list[int]]:
        """Run inline jigs here; node-roles of trivial roles are just listed (their result is known)."""
        easy = self._trivial_roles
        trivial = [c.id for c in claimed if c.role_id in easy]
        rest = [c for c in claimed if c.role_id not in easy]
        inputs = self._inputs(rest) if rest else {}
        return [self._run_one(c, inputs[c.id], self._context(c)) for c in rest], trivial

    def submit(self, claimed: Sequence[Claimed]) -> None:
        inputs = self._inputs(claimed)
        with self.db.read_session() as session:
            nodes = {
                nid: (name, hint)
                for nid, name, hint in session.execute(
                    select(Node.id, Node.name, Node.hint).where(Node.id.in_({c.node_id for c in claimed}))
                )
            }
        for c in claimed:
            future = self.pool.submit(self._run_one, c, inputs[c.id], self._context(c, nodes.get(c.node_id)))
            self.inflight[c.id] = future
            future.add_done_callback(lambda f: self.done.put(f.result()))

    # -- results -----------------------------------------------------------------------------------

    def finish(
        self, outcomes: Sequence[Outcome], *, trivial: Sequence[int] = (), claim_inline: int = 0
    ) -> list[Claimed]:
        """Write a batch of results; with `claim_inline`, claim the next inline batch in the same commit.

        `trivial` are node-roles of trivial roles that succeeded with nothing in and nothing out: they
        need no per-row work at all. Sharing the commit with the next claim saves one fsync per batch.
        """
        if not outcomes and not trivial:
            return self.claim(claim_inline, self._role_ids(inline=True)) if claim_inline else []
        claimed: list[Claimed] = []
        with self.db.session() as session:
            ok = [o for o in outcomes if o.ok]
            done = {
                "claimed_by": None,
                "lease_expires_at": None,
                "run_count": nr_t.c.run_count + 1,
                "attempts": 0,
                "retry_at": None,
            }
            mine = nr_t.c.claimed_by == self.name
            # trivial runs leave an empty wall and log: set in the same UPDATE, not a second one
            active = set(
                states.transition(
                    session,
                    states.TRANSITION,
                    states.ACTIVE,
                    ids=list(trivial),
                    where=mine,
                    values={**done, "wall": {}, "runlog": ""},
                    actor=self.name,
                )
            )
            active |= set(
                states.transition(
                    session,
                    states.TRANSITION,
                    states.ACTIVE,
                    ids=[o.node_role_id for o in ok],
                    where=mine,
                    values=done,
                    actor=self.name,
                )
            )
            self._write_walls(session, [o for o in ok if o.node_role_id in active])
            failed = {o.node_role_id for o in outcomes if not o.ok and self._fail(session, o)}
            self._record_runs(session, outcomes, trivial, active, failed)
            if self.db.is_sqlite:
                # SQLite has one writer at a time, so the unblock can share this transaction (and fsync)
                if active:
                    self._unblock(session, sorted(active))
                claimed = self.claim(claim_inline, self._role_ids(inline=True), session)
        self.completed += len(active) + len(failed)
        if not self.db.is_sqlite and (active or claim_inline):
            with self.db.session() as session:
                if active:
                    self._unblock(session, sorted(active))
                claimed = self.claim(claim_inline, self._role_ids(inline=True), session)
        return claimed

    def _record_runs(
        self,
        session: Any,
        outcomes: Sequence[Outcome],
        trivial: Sequence[int],
        active: set[int],
        failed: set[int],
    ) -> None:
        columns = ("node_role_id", "status", "inputs", "outputs", "log", "started_at", "finished_at")
        settled = active | failed
        discarded = [o.node_role_id for o in outcomes if o.node_role_id not in settled]
        discarded += [i for i in trivial if i not in settled]
        if discarded:  # a node-role deleted while it ran keeps no run record (nor breaks the batch)
            dialect = dialect_of(session)
            existing = set(
                session.scalars(
                    select(nr_t.c.id).where(in_ids(nr_t.c.id, "ids", dialect)),
                    {"ids": ids_value(discarded, dialect)},
                )
            )
            outcomes = [o for o in outcomes if o.node_role_id in settled or o.node_role_id in existing]
            trivial = [i for i in trivial if i in settled or i in existing]
        rows = [
            (
                o.node_role_id,
                _status(o, active, failed),
                o.inputs,
                o.outputs,
                o.log if o.ok else f"{o.error}\n{o.log}".strip(),
                o.started_at,
                o.finished_at,
            )
            for o in outcomes
        ]
        insert_rows(session, run_t, columns, rows, {"annealer": self.name})
        if trivial:
            now = utcnow()
            for status, ids in (
                ("ok", [i for i in trivial if i in active]),
                ("discarded", [i for i in trivial if i not in active]),
            ):
                constants: dict[str, Any] = {"annealer": self.name, "status": status}
                constants |= {"inputs": _EMPTY, "outputs": _EMPTY}
                constants |= {"log": "", "started_at": now, "finished_at": now}
                insert_rows(session, run_t, ("node_role_id",), [(i,) for i in ids], constants)

    def _write_walls(self, session: Any, outcomes: Sequence[Outcome]) -> None:
        full = [
            {"nr_id": o.node_role_id, "new_wall": o.outputs, "new_log": o.log}
            for o in outcomes
            if o.outputs or o.log
        ]
        empty = [o.node_role_id for o in outcomes if not (o.outputs or o.log)]
        if full:
            session.execute(
                update(nr_t)
                .where(nr_t.c.id == bindparam("nr_id"))
                .values(wall=bindparam("new_wall", type_=nr_t.c.wall.type), runlog=bindparam("new_log")),
                full,
                execution_options={"synchronize_session": False},
            )
        if empty:
            dialect = dialect_of(session)
            session.execute(
                update(nr_t).where(in_ids(nr_t.c.id, "ids", dialect)).values(wall={}, runlog=""),
                {"ids": ids_value(empty, dialect)},
                execution_options={"synchronize_session": False},
            )

    def _fail(self, session: Any, o: Outcome) -> bool:
        """A failed run: back to todo after a backoff when retryable and under the limit, else error."""
        attempts = o.attempts + 1
        values: dict[str, Any] = {
            "claimed_by": None,
            "lease_expires_at": None,
            "attempts": attempts,
            "run_count": nr_t.c.run_count + 1,
            "runlog": f"{o.error}\n{o.log}".strip(),
        }
        where = nr_t.c.claimed_by == self.name
        if o.retryable and attempts < self.retry_limit:
            delay = min(self.backoff_seconds * 2 ** (attempts - 1), self.backoff_max)
            values["retry_at"] = utcnow() + dt.timedelta(seconds=delay)
            reason = f"attempt {attempts} failed, retry in {delay:.0f}s: {o.error}"
            return bool(
                states.transition(
                    session,
                    states.TRANSITION,
                    states.TODO,
                    ids=[o.node_role_id],
                    where=where,
                    values=values,
                    actor=self.name,
                    reason=reason,
                )
            )
        return bool(
            states.transition(
                session,
                states.TRANSITION,
                states.ERROR,
                ids=[o.node_role_id],
                where=where,
                values=values,
                actor=self.name,
                reason=o.error,
            )
        )

    def unblock_children(self, parent_ids: Sequence[int]) -> int:
        with self.db.session() as session:
            return self._unblock(session, parent_ids)

    def _unblock(self, session: Any, parent_ids: Sequence[int]) -> int:
        dialect = dialect_of(session)
        children = select(edge_t.c.child_id).where(in_ids(edge_t.c.parent_id, "parents", dialect)).distinct()
        if dialect.name == "postgresql":
            # Check readiness on the children of this batch only, each by index. Left to itself the
            # planner anti-joined every edge of the table against every non-active parent (measured
            # 130 ms a batch at 8,000 node-roles, growing with the table).
            cand = children.cte("cand").prefix_with("MATERIALIZED")
            edge, parent = edge_t.alias("e"), nr_t.alias("p")
            waiting = (
                select(edge.c.child_id)
                .join(parent, parent.c.id == edge.c.parent_id)
                .where(edge.c.child_id == cand.c.child_id, parent.c.state != states.ACTIVE)
            )
            ready = select(cand.c.child_id).where(~waiting.exists()).cte("ready").prefix_with("MATERIALIZED")
            ids = cast(select(func.array_agg(ready.c.child_id)).scalar_subquery(), ARRAY(Integer))
            where: Any = nr_t.c.id == any_(ids)
        else:  # SQLite checks the correlated NOT EXISTS per candidate, by index, already
            where = and_(nr_t.c.id.in_(children), ~states.not_ready())
        moved = states.transition(
            session,
            states.BLOCKED,
            states.TODO,
            where=where,
            params={"parents": ids_value(parent_ids, dialect)},
            actor=self.name,
            reason="parents active",
        )
        return len(moved)

    # -- maintenance ------------------------------------------------------------------------------------

    def recover_expired(self) -> int:
        """Node-roles left in transition by a dead annealer go back to todo once their lease expires."""
        with self.db.session() as session:
            moved = states.transition(
                session,
                states.TRANSITION,
                states.TODO,
                where=nr_t.c.lease_expires_at < utcnow(),
                values={"claimed_by": None, "lease_expires_at": None},
                actor=self.name,
                reason="lease expired",
            )
        if moved:
            log.warning("recovered %d node-roles whose annealer lease expired", len(moved))
        return len(moved)

    def sweep_blocked(self) -> int:
        """Blocked node-roles whose parents are all active (a crash between result and unblock)."""
        with self.db.session() as session:
            return len(
                states.transition(
                    session,
                    states.BLOCKED,
                    states.TODO,
                    where=~states.not_ready(),
                    actor=self.name,
                    reason="parents active",
                )
            )

    def renew_leases(self) -> None:
        if not self.inflight:
            return
        with self.db.session() as session:
            session.execute(
                update(nr_t)
                .where(nr_t.c.id.in_(list(self.inflight)), nr_t.c.claimed_by == self.name)
                .values(lease_expires_at=utcnow() + self.lease),
                execution_options={"synchronize_session": False},
            )

    def _maintenance(self, idle: bool) -> int:
        now = time.monotonic()
        lease = self.lease.total_seconds()
        moved = 0
        if now - self._roles_loaded > 10:
            self.load_roles()
        if now - self._last_recover > self.recover_interval:
            self._last_recover = now
            moved += self.recover_expired()
        if now - self._last_renew > lease / 3:
            self._last_renew = now
            self.renew_leases()
        if idle and now - self._last_sweep > 5.0:
            self._last_sweep = now
            moved += self.sweep_blocked()
        return moved

    # -- the loop ---------------------------------------------------------------------------------------

    def step(self, *, idle: bool = False) -> int:
        """One round: maintenance, finished pool work, new pool work, one inline batch. Returns work done."""
        if not self.roles:
            self.load_roles()
        work = self._maintenance(idle)
        work += self._drain()
        free = self.workers - len(self.inflight)
        pooled = self.claim(free, self._role_ids(inline=False))
        if pooled:
            self.submit(pooled)
            work += len(pooled)
        inline = self._next_inline or self.claim(self.batch, self._role_ids(inline=True))
        self._next_inline = []
        if inline:
            outcomes, trivial = self.run_inline(inline)
            self._next_inline = self.finish(outcomes, trivial=trivial, claim_inline=self.batch)
            work += len(inline)
        return work

    def _drain(self) -> int:
        outcomes: list[Outcome] = []
        while True:
            try:
                outcomes.append(self.done.get_nowait())
            except queue.Empty:
                break
        for o in outcomes:
            self.inflight.pop(o.node_role_id, None)
        self.finish(outcomes)
        return len(outcomes)

    def wait_inflight(self, timeout: float | None = None) -> None:
        """Let running jigs finish and write their results (graceful stop)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.inflight and (deadline is None or time.monotonic() < deadline):
            try:
                outcome = self.done.get(timeout=0.1)
            except queue.Empty:
                continue
            self.inflight.pop(outcome.node_role_id, None)
            self.finish([outcome])
        self._drain()

    def run_until_idle(self, timeout: float = 60.0, idle_rounds: int = 3) -> None:
        """Step until nothing is left to do: no runnable work, no retry pending, nothing running anywhere.

        A node-role held by a dead annealer counts as running until its lease expires and this annealer
        recovers it (tests, `kiln annealer run --until-idle`).
        """
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < idle_rounds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"annealer still busy after {timeout:.0f}s")
            if self.step(idle=quiet > 0) or self.inflight:
                quiet = 0
                if self.inflight and self.done.empty():
                    time.sleep(0.01)
            elif self._next_retry_in() is not None:
                quiet = 0
                time.sleep(min(self._next_retry_in() or 0.0, 0.5, max(deadline - time.monotonic(), 0)))
            else:
                self._last_sweep = 0.0  # sweep on the next idle round before calling it done
                quiet += 1

    def _next_retry_in(self) -> float | None:
        """Seconds until a backed-off retry or another annealer's lease comes due; None if neither."""
        with self.db.read_session() as session:
            retry: dt.datetime | None = session.scalar(
                select(func.min(nr_t.c.retry_at)).where(
                    nr_t.c.state == states.TODO, nr_t.c.retry_at.is_not(None)
                )
            )
            lease: dt.datetime | None = session.scalar(
                select(func.min(nr_t.c.lease_expires_at)).where(nr_t.c.state == states.TRANSITION)
            )
        due = [t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (retry, lease) if t is not None]
        if not due:
            return None
        # another annealer may finish its runs before its lease is due: look again soon
        return min(max((min(due) - utcnow()).total_seconds(), 0.0), 0.2 if lease else 60.0)

    def close(self) -> None:
        while self._next_inline:  # claimed already: run them rather than leave them to lease expiry
            outcomes, trivial = self.run_inline(self._next_inline)
            self._next_inline = self.finish(outcomes, trivial=trivial)
        self.wait_inflight()
        self.pool.shutdown(wait=True)


def _status(outcome: Outcome, active: set[int], failed: set[int]) -> str:
    if outcome.node_role_id in active or outcome.node_role_id in failed:
        return "ok" if outcome.ok else "error"
    return "discarded"  # re-annealed or recovered while it ran: its result no longer applies
