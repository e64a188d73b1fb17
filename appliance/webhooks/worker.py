"""`kiln-webhooks`: fans new events out to the sinks whose filter matches and POSTs them, signed.

Each round, in short transactions of its own (so it never holds the database's write lock while a
receiver thinks, and an annealer never waits on a receiver):

1. **fan-out**: the events past each enabled sink's `last_event_id` (up to `batch`) become one
   `pending` Delivery per matching (sink, event), and the sink's cursor moves past them in the same
   transaction. The cursor moves by compare-and-set, and (sink, event) is unique, so two workers never
   create a delivery twice.
2. **claim**: due deliveries, at most `per_sink` in flight per sink so a receiver that hangs holds
   only its own slots, never the others'. A claim counts the attempt and pushes `next_attempt_at` one
   lease ahead: a worker that dies mid-POST leaves the delivery to be retried after the lease.
3. **send**: a bounded thread pool POSTs with a short timeout (appliance.webhooks.post).
4. **record**: 2xx → `delivered`; otherwise retried after `backoff * 2**(attempt-1)` seconds (capped)
   until `max_attempts`, then `failed`. Status code and error of the last attempt are kept.

Deliveries are not Events (an event per delivery would itself be delivered, forever).

PostgreSQL hands out event ids before commit, so id 11 can be visible while 10 is still being
committed. The fan-out stops before such a hole until it fills or has stayed open `gap_seconds`
(a rolled-back transaction leaves one for good); an event committed later than that after a newer one
is not delivered. SQLite commits one writer at a time, so its ids never arrive out of order.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, insert, select, update

from appliance.config import Settings
from appliance.db import Database
from appliance.models import Delivery, Event, EventSink, utcnow
from appliance.webhooks.post import Answer, event_body, headers_for, post
from appliance.webhooks.sinks import decrypt_secret, matches, parse_filter

log = logging.getLogger(__name__)

SINK_RELOAD_SECONDS = 2.0
PRUNE_SECONDS = 3600.0
IDLE_MIN, IDLE_MAX = 0.02, 0.5


@dataclass(frozen=True)
class Sink:
    id: int
    name: str
    url: str
    secret: bytes
    patterns: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class Job:
    delivery_id: int
    sink_id: int
    event_id: int
    attempt: int


@dataclass(frozen=True)
class Result:
    job: Job
    answer: Answer


class WebhookWorker:
    """One process's delivery engine; `step()` does one round, `serve()` loops it."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        batch: int = 500,
        gap_seconds: float = 10.0,
    ) -> None:
        self.db = db
        self.settings = settings
        self.workers = max(settings.webhooks_workers, 1)
        self.timeout = settings.webhooks_timeout
        self.max_attempts = max(settings.webhooks_max_attempts, 1)
        self.backoff = settings.webhooks_backoff_seconds
        self.backoff_max = settings.webhooks_backoff_max
        self.per_sink = max(settings.webhooks_per_sink, 1)
        self.keep = dt.timedelta(days=settings.webhooks_keep_days)
        self.batch = batch
        self.gap_seconds = gap_seconds
        self.lease = dt.timedelta(seconds=self.timeout * 2 + 30)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kiln-webhook")
        self.done: queue.Queue[Result] = queue.Queue()
        self.wakeup = threading.Event()
        self.inflight: dict[int, Job] = {}
        self.sinks: dict[int, Sink] = {}
        self.delivered = 0
        self.failed = 0
        self._sinks_loaded = -1e9
        self._last_prune = time.monotonic()
        self._gaps: dict[int, float] = {}
        self._undecryptable: set[tuple[int, int]] = set()

    def backoff_for(self, attempt: int) -> float:
        """Seconds before the retry that follows failed attempt number `attempt` (1, 2, ...)."""
        return float(min(self.backoff * 2 ** max(attempt - 1, 0), self.backoff_max))

    # -- sinks ------------------------------------------------------------------------------------------

    def load_sinks(self) -> None:
        with self.db.read_session() as session:
            rows = session.execute(
                select(
                    EventSink.id,
                    EventSink.name,
                    EventSink.url,
                    EventSink.filter,
                    EventSink.secret_enc,
                    EventSink.version,
                ).where(EventSink.enabled.is_(True))
            ).all()
        sinks: dict[int, Sink] = {}
        for sink_id, name, url, filter_, secret_enc, version in rows:
            cached = self.sinks.get(sink_id)
            if cached is not None and cached.version == version:
                sinks[sink_id] = cached
                continue
            try:
                secret = decrypt_secret(self.settings, name, secret_enc)
                patterns = parse_filter(filter_)
            except Exception as exc:  # one broken sink must not stop the others' deliveries
                if (sink_id, version) not in self._undecryptable:
                    self._undecryptable.add((sink_id, version))
                    log.error("event sink %s skipped: %s", name, getattr(exc, "message", exc))
                continue
            sinks[sink_id] = Sink(sink_id, name, url, secret, patterns, version)
        self.sinks = sinks
        self._sinks_loaded = time.monotonic()

    # -- fan-out ----------------------------------------------------------------------------------------

    def fan_out(self) -> int:
        """New events → pending deliveries. Returns the number of events read past the oldest cursor."""
        if not self.sinks:
            return 0
        with self.db.read_session() as session:
            cursors: dict[int, int] = {
                sink_id: last
                for sink_id, last in session.execute(
                    select(EventSink.id, EventSink.last_event_id).where(
                        EventSink.enabled.is_(True), EventSink.id.in_(list(self.sinks))
                    )
                )
            }
            if not cursors:
                return 0
            low = min(cursors.values())
            events = session.execute(
                select(Event.id, Event.action).where(Event.id > low).order_by(Event.id).limit(self.batch)
            ).all()
        if not events:
            return 0
        upto = self._settled(low, [e[0] for e in events])
        if upto <= low:
            return 0
        now = utcnow()
        with self.db.session() as session:
            for sink_id, last in cursors.items():
                sink = self.sinks.get(sink_id)
                if sink is None or last >= upto:
                    continue
                moved = cast(
                    CursorResult[Any],
                    session.execute(
                        update(EventSink)
                        .where(EventSink.id == sink_id, EventSink.last_event_id == last)
                        # the cursor is bookkeeping: it must not look like an operator's change
                        .values(last_event_id=upto, updated_at=EventSink.updated_at)
                        .execution_options(synchronize_session=False)
                    ),
                ).rowcount
                if not moved:
                    continue  # another worker moved this cursor first and fans these events out
                rows = [
                    {
                        "sink_id": sink_id,
                        "event_id": event_id,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for event_id, action in events
                    if last < event_id <= upto and matches(sink.patterns, action)
                ]
                if rows:
                    session.execute(insert(Delivery), rows)
        return sum(1 for e in events if e[0] <= upto)

    def _settled(self, low: int, ids: Sequence[int]) -> int:
        """The highest event id the fan-out may pass: before the first hole still young (PostgreSQL)."""
        if self.db.is_sqlite:
            return ids[-1]
        now = time.monotonic()
        expected = low + 1
        for event_id in ids:
            while expected < event_id:
                first_seen = self._gaps.setdefault(expected, now)
                if now - first_seen < self.gap_seconds:
                    return expected - 1
                expected += 1
            expected = event_id + 1
        for stale in [i for i in self._gaps if i <= ids[-1]]:
            del self._gaps[stale]
        return ids[-1]

    # -- claim, send, record ----------------------------------------------------------------------------

    def claim(self, free: int) -> list[tuple[Job, dict[str, Any]]]:
        """Due deliveries of the loaded sinks, at most `per_sink` in flight each; attempts counted."""
        busy = Counter(job.sink_id for job in self.inflight.values())
        now = utcnow()
        candidates: list[int] = []
        with self.db.read_session() as session:
            for sink_id in self.sinks:
                room = min(self.per_sink - busy[sink_id], free - len(candidates))
                if room <= 0:
                    continue
                candidates += session.scalars(
                    select(Delivery.id)
                    .where(
                        Delivery.sink_id == sink_id,
                        Delivery.status == "pending",
                        Delivery.next_attempt_at <= now,
                    )
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(room)
                ).all()
        if not candidates:
            return []
        with self.db.session() as session:
            claimed = session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_(candidates),
                    Delivery.status == "pending",
                    Delivery.next_attempt_at <= now,
                )
                .values(attempts=Delivery.attempts + 1, next_attempt_at=now + self.lease, last_attempt_at=now)
                .returning(Delivery.id, Delivery.sink_id, Delivery.event_id, Delivery.attempts)
                .execution_options(synchronize_session=False)
            ).all()
        jobs = [Job(d, s, e, a) for d, s, e, a in claimed]
        if not jobs:
            return []
        with self.db.read_session() as session:
            found = session.scalars(select(Event).where(Event.id.in_({j.event_id for j in jobs}))).all()
            events = {e.id: _event_dict(e) for e in found}
        return [(job, events.get(job.event_id, {})) for job in jobs]

    def submit(self, claimed: Sequence[tuple[Job, dict[str, Any]]]) -> None:
        for job, event in claimed:
            self.inflight[job.delivery_id] = job
            self.pool.submit(self._send, job, event)

    def _send(self, job: Job, event: dict[str, Any]) -> None:
        try:
            sink = self.sinks.get(job.sink_id)
            if sink is None:
                answer = Answer(None, "sink disabled or deleted while queued", 0.0)
            elif not event:
                answer = Answer(None, f"event {job.event_id} no longer exists", 0.0)
            else:
                body = event_body(event)
                headers = headers_for(
                    sink.secret,
                    body,
                    event_id=job.event_id,
                    action=str(event["action"]),
                    delivery_id=job.delivery_id,
                    attempt=job.attempt,
                )
                answer = post(sink.url, body, headers, timeout=self.timeout)
        except Exception as exc:  # a bug here must still record the attempt, not lose it
            log.exception("delivery %d crashed", job.delivery_id)
            answer = Answer(None, f"{type(exc).__name__}: {exc}"[:255], 0.0)
        self.done.put(Result(job, answer))
        self.wakeup.set()

    def record(self, results: Sequence[Result]) -> None:
        if not results:
            return
        now = utcnow()
        with self.db.session() as session:
            for r in results:
                values: dict[str, Any] = {
                    "last_status_code": r.answer.status_code,
                    "last_error": r.answer.error,
                }
                if r.answer.ok:
                    values["status"] = "delivered"
                    self.delivered += 1
                elif r.job.attempt >= self.max_attempts:
                    values["status"] = "failed"
                    self.failed += 1
                    log.warning("delivery %d failed for good: %s", r.job.delivery_id, r.answer.error)
                else:
                    values["next_attempt_at"] = now + dt.timedelta(seconds=self.backoff_for(r.job.attempt))
                # guarded: a redelivery or a deleted sink since the claim wins over this result
                session.execute(
                    update(Delivery)
                    .where(
                        Delivery.id == r.job.delivery_id,
                        Delivery.attempts == r.job.attempt,
                        Delivery.status == "pending",
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )

    def drain(self) -> int:
        results: list[Result] = []
        while True:
            try:
                results.append(self.done.get_nowait())
            except queue.Empty:
                break
        for r in results:
            self.inflight.pop(r.job.delivery_id, None)
        self.record(results)
        return len(results)

    def prune(self) -> int:
        cutoff = utcnow() - self.keep
        with self.db.session() as session:
            gone = cast(
                CursorResult[Any],
                session.execute(
                    delete(Delivery).where(
                        Delivery.status.in_(("delivered", "failed")), Delivery.created_at < cutoff
                    )
                ),
            ).rowcount
        return int(gone or 0)

    # -- the loop ---------------------------------------------------------------------------------------

    def step(self) -> int:
        """One round: results, sinks (every few seconds), fan-out, new sends. Returns work done."""
        self.wakeup.clear()
        work = self.drain()
        now = time.monotonic()
        if now - self._sinks_loaded > SINK_RELOAD_SECONDS:
            self.load_sinks()
        work += self.fan_out()
        free = self.workers - len(self.inflight)
        if free > 0:
            claimed = self.claim(free)
            self.submit(claimed)
            work += len(claimed)
        if now - self._last_prune > PRUNE_SECONDS:
            self._last_prune = now
            self.prune()
        return work

    def close(self, wait: float | None = None) -> None:
        """Let POSTs under way end (each is bounded by the timeout) and record them."""
        deadline = time.monotonic() + (self.timeout + 1 if wait is None else wait)
        while self.inflight and time.monotonic() < deadline:
            try:
                result = self.done.get(timeout=0.05)
            except queue.Empty:
                continue
            self.done.put(result)
            self.drain()
        self.drain()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _event_dict(event: Event) -> dict[str, Any]:
    at = event.at if event.at.tzinfo else event.at.replace(tzinfo=dt.UTC)
    return {
        "id": event.id,
        "at": at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "message": event.message,
        "data": event.data,
    }


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Entry point of the `webhooks` service: deliver until `stop` is set."""
    worker = WebhookWorker(db, settings)
    log.info("webhook worker started: %d senders, %g s timeout", worker.workers, worker.timeout)
    idle = IDLE_MIN
    try:
        while not stop.is_set():
            try:
                work = worker.step()
            except Exception:  # the database went away for a moment: log, back off, go on
                log.exception("webhook round failed; retrying")
                work, idle = 0, IDLE_MAX
            if work:
                idle = IDLE_MIN
            else:
                worker.wakeup.wait(idle)  # a finished POST wakes the loop to record it at once
                idle = min(idle * 2, IDLE_MAX)
    finally:
        worker.close()
        log.info("webhook worker stopped: %d delivered, %d failed", worker.delivered, worker.failed)
