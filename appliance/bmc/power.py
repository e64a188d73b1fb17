"""Power over many nodes at once, and the `power-state` poller.

Both use a bounded thread pool: BMC calls are network waits, and one slow or dead BMC must hold up
only its own node. Results are written in one transaction per batch, not one per node.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from sqlalchemy import select

from appliance import events
from appliance.bmc.base import POWER_ACTIONS, BMCTarget
from appliance.bmc.credentials import target_for_node
from appliance.bmc.probe import DriverCache
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import BMCError, InvalidInput, KilnError, NotFound
from appliance.metrics import ERRORS, REQUESTS
from appliance.models import Node

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 32
DEFAULT_TIMEOUT = 10.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PowerResult:
    node_id: int
    name: str
    action: str
    ok: bool
    state: str | None = None  # on | off after the action ("status"), None when unknown
    error: str | None = None
    error_kind: str | None = None  # BMCAuthError, BMCUnreachable...
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "action": self.action,
            "ok": self.ok,
            "state": self.state,
            "error": self.error,
            "error_kind": self.error_kind,
            "seconds": round(self.seconds, 3),
        }


def _one(cache: DriverCache, target: BMCTarget, action: str) -> str | None:
    driver = cache.get(target)
    if action == "status":
        return driver.power_state()
    driver.power(action)
    return None


def _run_one(cache: DriverCache, node_id: int, name: str, target: BMCTarget, action: str) -> PowerResult:
    started = time.monotonic()
    try:
        state = _one(cache, target, action)
    except KilnError as exc:
        ERRORS.labels("power", action).inc()
        return PowerResult(
            node_id,
            name,
            action,
            ok=False,
            error=exc.message,
            error_kind=type(exc).__name__,
            seconds=time.monotonic() - started,
        )
    REQUESTS.labels("power", action).inc()
    return PowerResult(node_id, name, action, ok=True, state=state, seconds=time.monotonic() - started)


def resolve_nodes(db: Database, refs: Sequence[str | int]) -> list[int]:
    """Node ids for names or ids, in the given order; NotFound names every unknown one."""
    ids: list[int] = []
    missing: list[str] = []
    with db.read_session() as session:
        for ref in refs:
            text = str(ref)
            node = (
                session.get(Node, int(text))
                if text.isdigit()
                else session.scalar(select(Node).where(Node.name == text))
            )
            if node is None:
                missing.append(text)
            else:
                ids.append(node.id)
    if missing:
        raise NotFound(f"no such node: {', '.join(missing)}", field="nodes")
    return ids


def power_nodes(
    db: Database,
    settings: Settings,
    node_ids: Iterable[int],
    action: str,
    *,
    cache: DriverCache | None = None,
    workers: int = DEFAULT_WORKERS,
    timeout: float = DEFAULT_TIMEOUT,
    actor: str = "system",
    progress: Callable[[PowerResult], None] | None = None,
) -> list[PowerResult]:
    """Run `action` (status or one of POWER_ACTIONS) on every node in parallel; one result each.

    A node without a BMC, with bad credentials or an unreachable BMC gets a failed result; the others
    are not delayed by it beyond the pool's bound.
    """
    if action != "status" and action not in POWER_ACTIONS:
        raise InvalidInput("action", f"'{action}' is not one of status, {', '.join(POWER_ACTIONS)}")
    own_cache = cache is None
    cache = cache or DriverCache()
    ids = list(dict.fromkeys(node_ids))
    results: dict[int, PowerResult] = {}
    jobs: list[tuple[int, str, BMCTarget]] = []
    with db.read_session() as session:
        found = {n.id: n for n in session.scalars(select(Node).where(Node.id.in_(ids)))}
        for node_id in ids:
            node = found.get(node_id)
            if node is None:
                results[node_id] = PowerResult(node_id, str(node_id), action, ok=False, error="no such node")
                continue
            try:
                jobs.append((node.id, node.name, target_for_node(node, settings, timeout=timeout)))
            except KilnError as exc:
                results[node.id] = PowerResult(
                    node.id, node.name, action, ok=False, error=exc.message, error_kind=type(exc).__name__
                )
    for result in results.values():
        if progress:
            progress(result)
    try:
        if jobs:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
                futures = [pool.submit(_run_one, cache, i, name, target, action) for i, name, target in jobs]
                for future in as_completed(futures):
                    result = future.result()
                    results[result.node_id] = result
                    if progress:
                        progress(result)
    finally:
        if own_cache:
            cache.close()
    ordered = [results[i] for i in ids if i in results]
    record_results(db, ordered, actor=actor)
    return ordered


def record_results(db: Database, results: Sequence[PowerResult], *, actor: str = "system") -> None:
    """Write power_state/power_checked_at and Events for a batch in one transaction.

    A status read writes an Event only when the state changed, so polling a quiet rack does not fill
    the event log; every power action is an Event (failed ones too).
    """
    if not results:
        return
    now = utcnow()
    with db.session() as session:
        found = {
            n.id: n for n in session.scalars(select(Node).where(Node.id.in_([r.node_id for r in results])))
        }
        for r in results:
            node = found.get(r.node_id)
            if node is None:
                continue
            if r.action == "status":
                if r.ok:
                    previous = node.power_state
                    node.power_state = r.state
                    node.power_checked_at = now
                    if previous != r.state:
                        events.record(
                            session,
                            "node.power_state",
                            subject_type="node",
                            subject_id=node.id,
                            actor=actor,
                            message=f"{node.name} power {previous or 'unknown'} -> {r.state}",
                            data={"from": previous, "to": r.state},
                        )
                continue
            events.record(
                session,
                f"node.power.{r.action}",
                subject_type="node",
                subject_id=node.id,
                actor=actor,
                message=f"power {r.action} {node.name}: " + ("done" if r.ok else f"failed: {r.error}"),
                data={"ok": r.ok, "error": r.error, "error_kind": r.error_kind},
            )


@dataclass
class _Schedule:
    next_at: float = 0.0
    failures: int = 0


@dataclass
class PollStats:
    checked: int = 0
    failed: int = 0
    skipped: int = 0
    results: list[PowerResult] = field(default_factory=list)


class PowerPoller:
    """Reads every node's power state, at most once per `min_interval` per BMC.

    A BMC that fails is asked again after min_interval * 2**failures (capped at `max_backoff`), so a
    dead BMC costs one timeout every few minutes rather than a thread every interval.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        min_interval: float = 60.0,
        max_backoff: float = 900.0,
        workers: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.settings = settings
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.workers = workers
        self.timeout = timeout
        self.clock = clock
        self.cache = DriverCache()
        self._schedule: dict[tuple[str, int | None, str | None], _Schedule] = {}

    def _due(self) -> tuple[list[tuple[int, str, BMCTarget]], int]:
        now = self.clock()
        due: list[tuple[int, str, BMCTarget]] = []
        skipped = 0
        seen: set[tuple[str, int | None, str | None]] = set()
        with self.db.read_session() as session:
            nodes = session.scalars(select(Node).where(Node.bmc_address.is_not(None)).order_by(Node.id)).all()
            for node in nodes:
                try:
                    target = target_for_node(node, self.settings, timeout=self.timeout)
                except KilnError:
                    skipped += 1
                    continue
                key = (target.host, target.port, target.system_id)
                if key in seen or self._schedule.get(key, _Schedule()).next_at > now:
                    skipped += 1
                    continue
                seen.add(key)
                due.append((node.id, node.name, target))
        return due, skipped

    def poll_once(self) -> PollStats:
        due, skipped = self._due()
        stats = PollStats(skipped=skipped)
        if not due:
            return stats
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(due)))) as pool:
            results = list(pool.map(lambda job: _run_one(self.cache, job[0], job[1], job[2], "status"), due))
        now = self.clock()
        for (_, _, target), result in zip(due, results, strict=True):
            entry = self._schedule.setdefault((target.host, target.port, target.system_id), _Schedule())
            if result.ok:
                entry.failures = 0
                entry.next_at = now + self.min_interval
            else:
                entry.failures += 1
                entry.next_at = now + min(self.max_backoff, self.min_interval * 2**entry.failures)
                log.warning("power-state: %s: %s", result.name, result.error)
        stats.checked = sum(r.ok for r in results)
        stats.failed = len(results) - stats.checked
        stats.results = results
        record_results(self.db, results)
        return stats

    def run(self, stop: threading.Event, *, tick: float = 5.0) -> None:
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except (BMCError, KilnError) as exc:
                    log.error("power-state poll failed: %s", exc)
                stop.wait(tick)
        finally:
            self.cache.close()


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Entry point of the `power-state` service: poll until `stop` is set."""
    log.info("power-state poller started")
    PowerPoller(db, settings).run(stop)
