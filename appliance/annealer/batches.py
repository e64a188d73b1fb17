"""The annealer's set-based half: claiming batches of node-roles and writing their results.

`BatchWork` is mixed into `runner.Annealer`; every method here is a handful of statements per batch,
never one per node-role (see runner's docstring for the whole round).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from typing import cast as typed

from sqlalchemy import ARRAY, Integer, Table, and_, any_, bindparam, cast, func, or_, select, update

from appliance.annealer import states
from appliance.annealer.bulk import dialect_of, ids_value, in_ids, insert_rows
from appliance.db import Database
from appliance.jigs import Jig
from appliance.models import Deployment, Node, NodeRole, NodeRoleEdge, Role, Run, utcnow

log = logging.getLogger(__name__)

_EMPTY: dict[str, Any] = {}  # the inputs and outputs of trivial runs, serialised once per batch

nr_t = typed(Table, NodeRole.__table__)
node_t = typed(Table, Node.__table__)
dep_t = typed(Table, Deployment.__table__)
edge_t = typed(Table, NodeRoleEdge.__table__)
run_t = typed(Table, Run.__table__)
role_t = typed(Table, Role.__table__)


def _with_node_and_deployment(cand: Any) -> Any:
    return cand.join(node_t, node_t.c.id == cand.c.node_id).join(dep_t, dep_t.c.id == cand.c.deployment_id)


def _claimable(cand: Any, role_ids: Sequence[int], now: dt.datetime) -> list[Any]:
    """The conditions both claims share: todo, node alive and available, inside the node's target
    role, deployment committed, retry backoff over."""
    return [
        cand.c.state == states.TODO,
        cand.c.role_id.in_(list(role_ids)),
        node_t.c.alive.is_(True),
        node_t.c.available.is_(True),
        states.in_target_scope(cand.c.id, node_t.c.target_role_id),
        dep_t.c.state == "committed",
        or_(cand.c.retry_at.is_(None), cand.c.retry_at <= now),
    ]


@dataclass(frozen=True)
class RoleInfo:
    id: int
    name: str
    jig: Jig | None
    inputs: Mapping[str, Mapping[str, Any]]
    outputs: Mapping[str, Mapping[str, Any]]
    jig_data: Mapping[str, Any]
    concurrent: bool = False  # may run beside another run on the same node

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


class BatchWork:
    """Claims and result writes of an annealer; the attributes are the Annealer's."""

    db: Database
    name: str
    lease: dt.timedelta
    retry_limit: int
    backoff_seconds: float
    backoff_max: float
    completed: int
    roles: dict[int, RoleInfo]
    inflight: dict[int, Future[Outcome]]

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
            .select_from(_with_node_and_deployment(cand))
            .where(*_claimable(cand, role_ids, now))
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

    def claim_pooled(self, limit: int, role_ids: Sequence[int]) -> list[Claimed]:
        """Claim pool work: at most one run per node at a time (as OpenCrowbar), unless `concurrent`.

        Inline jigs (noop) never touch the node, so they are not held to this. On PostgreSQL the
        candidates' node rows are locked (SKIP LOCKED) while choosing, so two annealers cannot both
        start a run on one node; SQLite has one writer at a time anyway.
        """
        if limit <= 0 or not role_ids:
            return []
        now = utcnow()
        cand, busy, busy_role = nr_t.alias("claimable"), nr_t.alias("busy"), role_t.alias("busy_role")
        occupied = (
            select(busy.c.id)
            .join(busy_role, busy_role.c.id == busy.c.role_id)
            .where(
                busy.c.node_id == cand.c.node_id,
                busy.c.state == states.TRANSITION,
                busy_role.c.concurrent.is_(False),
            )
            .exists()
        )
        query = (
            select(cand.c.id, cand.c.node_id, cand.c.role_id)
            .select_from(_with_node_and_deployment(cand))
            .where(*_claimable(cand, role_ids, now), ~occupied)
            .order_by(cand.c.cohort, cand.c.id)
            .limit(limit * 4)
        )
        if self.inflight:
            query = query.where(cand.c.id.not_in(list(self.inflight)))
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=[cand, node_t])
        with self.db.session() as session:
            chosen: list[int] = []
            nodes: set[int] = set()
            for nr_id, node_id, role_id in session.execute(query):
                if not self.roles[role_id].concurrent:
                    if node_id in nodes:
                        continue
                    nodes.add(node_id)
                chosen.append(nr_id)
                if len(chosen) == limit:
                    break
            rows = states.transition_rows(
                session,
                states.TODO,
                states.TRANSITION,
                ids=chosen,
                values={"claimed_by": self.name, "lease_expires_at": now + self.lease},
                returning=(nr_t.c.node_id, nr_t.c.role_id, nr_t.c.deployment_id, nr_t.c.attempts),
                actor=self.name,
                reason="claimed",
            )
        return [Claimed(nr_id, node, role, dep, attempts or 0) for nr_id, node, role, dep, attempts in rows]

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


def _status(outcome: Outcome, active: set[int], failed: set[int]) -> str:
    if outcome.node_role_id in active or outcome.node_role_id in failed:
        return "ok" if outcome.ok else "error"
    return "discarded"  # re-annealed or recovered while it ran: its result no longer applies
