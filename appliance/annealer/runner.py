"""The annealer's engine: claim runnable node-roles in batches, run their jigs, write results in batches.

Per batch, whatever its size: one UPDATE … RETURNING claims it (FOR UPDATE SKIP LOCKED on PostgreSQL, so
N annealer processes never claim the same row), three queries gather the inputs, one UPDATE moves the
successes to `active`, one INSERT writes their events and one their run records, and, in a second
transaction after that commit, one UPDATE unblocks the children whose parents are now all active.
Unblocking after the commit matters on PostgreSQL: two annealers finishing the two parents of one child
at the same moment each see the other's parent active only once it is committed, and the later of the
two unblock statements always does.

Jigs that declare themselves `inline` (noop) run in the annealer's thread with no hop; the rest go to
a bounded thread pool, claimed only as workers free up so a slow script never sits on a lease unrun,
and at most one at a time per node unless the role is `concurrent`. The claims and the result writes
live in batches.py; this module runs jigs and the loop.
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
from typing import Any

from sqlalchemy import func, select, update

from appliance.annealer import hooks, states
from appliance.annealer.barclamps import HOOKS_KEY, SCHEMA_TYPES
from appliance.annealer.batches import BatchWork, Claimed, Outcome, RoleInfo, nr_t
from appliance.annealer.injection import Inputs, gather_inputs
from appliance.db import Database
from appliance.errors import JigError, KilnError
from appliance.jigs import REGISTRY, NodeRoleContext
from appliance.models import Node, Role, utcnow

log = logging.getLogger(__name__)


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


class Annealer(BatchWork):
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
        self.hooks = hooks.HookRunner(db, self.name, lease_seconds=lease_seconds)

    # -- roles ---------------------------------------------------------------------------------

    def load_roles(self) -> None:
        with self.db.read_session() as session:
            rows = session.execute(
                select(
                    Role.id, Role.name, Role.jig, Role.inputs, Role.outputs, Role.jig_data, Role.concurrent
                )
            )
            self.roles = {
                rid: RoleInfo(
                    rid, name, REGISTRY.get(jig), inputs or {}, outputs or {}, jig_data or {}, concurrent
                )
                for rid, name, jig, inputs, outputs, jig_data, concurrent in rows
            }
        self._trivial_roles = frozenset(r.id for r in self.roles.values() if r.trivial)
        for role in self.roles.values():
            if role.jig_data.get(HOOKS_KEY):
                self._register_hooks(role.name, role.jig_data[HOOKS_KEY])
        self._roles_loaded = time.monotonic()

    def _register_hooks(self, role: str, targets: Mapping[str, str]) -> None:
        try:
            hooks.register_targets(role, targets)
        except ValueError as exc:  # checked at load time; the module may have gone since
            log.error("role %s: hooks not registered: %s", role, exc)

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
        pooled = self.claim_pooled(free, self._role_ids(inline=False))
        if pooled:
            self.submit(pooled)
            work += len(pooled)
        inline = self._next_inline or self.claim(self.batch, self._role_ids(inline=True))
        self._next_inline = []
        if inline:
            outcomes, trivial = self.run_inline(inline)
            self._next_inline = self.finish(outcomes, trivial=trivial, claim_inline=self.batch)
            work += len(inline)
        # after the results are committed; hooks may make more work, so their calls count as work
        work += self.hooks.poll()
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
