"""`kiln-webhooks`: fans new events out to the sinks whose filter matches and POSTs them, signed.

Each round, in short transactions of its own (so it never holds the database's write lock while a
receiver thinks, and an annealer never waits on a receiver):

1. **fan-out**: the events past each enabled sink's `last_event_id` (up to `batch`) become one
   `pending` Delivery per matching (sink, event), and the sink's cursor moves past them in the same
   transaction. The cursor moves by compare-and-set, and (sink, event) is unique, so two workers never
   create a delivery twice.
2. **claim**: due deliveries in chunks of up to CHUNK, at most `per_sink` chunks in flight per sink, so
   a receiver that hangs holds only its own slots, never the others'. A claim counts the attempt and
   pushes `next_attempt_at` one lease ahead: a worker that dies mid-POST leaves the delivery to be
   retried after the lease.
3. **send**: a bounded thread pool; each chunk goes over one kept-alive connection with a short
   timeout (appliance.webhooks.post). A receiver that does not answer (or refuses the connection)
   ends its chunk: the rest are handed back untried, to wait out the same backoff, so a dead
   receiver costs one timeout per slot per retry, not one per event.
4. **record**: 2xx → `delivered`; otherwise retried after `backoff * 2**(attempt-1)` seconds (capped)
   until `max_attempts`, then `failed`. Status code and error of the last attempt are kept.
5. **hold**: a sink whose receiver did not answer at all (timeout, refused) is held: no fan-out and
   no claims for it until its hold ends (backoff, doubling per strike up to the cap); events wait in
   the event log behind its cursor, and the first answer (any status) releases it to catch up. On
   SQLite a dead receiver therefore costs the annealer almost no writes: a delivery row per event
   for a receiver that cannot take it cost the annealer 20-30 % of its rate (bench/webhooks.py).

The fan-out writes at most every FAN_OUT_SECONDS (sooner while a full batch is waiting), and less
often (up to FAN_OUT_MAX) while its writes are slow: on SQLite every write transaction takes the one
write lock and an fsync, which the annealer needs too.

Deliveries are not Events (an event per delivery would itself be delivered, forever).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import CursorResult, Table, bindparam, delete, select, update

from appliance.config import Settings
from appliance.db import Database
from appliance.models import Delivery, Event, EventSink, utcnow
from appliance.webhooks.fanout import FanOut, Sink
from appliance.webhooks.post import Answer, Connection, event_body, headers_for
from appliance.webhooks.sinks import decrypt_secret, parse_filter

log = logging.getLogger(__name__)

SINK_RELOAD_SECONDS = 2.0
PRUNE_SECONDS = 3600.0
FAN_OUT_SECONDS = 0.2
FAN_OUT_MAX = 2.0
FAN_OUT_SLOW = 0.05
CHUNK = 100
IDLE_MIN, IDLE_MAX = 0.02, 0.5

deliveries_t = cast(Table, Delivery.__table__)

ATTEMPTS = Counter(
    "kiln_webhook_attempts_total",
    "Webhook POST attempts by outcome: delivered, retry (will be tried again), failed (gave up)",
    ["outcome"],
)
POST_SECONDS = Histogram("kiln_webhook_post_seconds", "Seconds one webhook POST took, answered or not")
HELD = Gauge("kiln_webhook_sinks_held", "Event sinks held back because their receiver does not answer")


@dataclass(frozen=True)
class Job:
    delivery_id: int
    sink_id: int
    event_id: int
    attempt: int


@dataclass(frozen=True)
class Result:
    """A tried delivery (`answer`), or one handed back untried (`retry_in` seconds from now)."""

    job: Job
    answer: Answer | None
    retry_in: float = 0.0


class WebhookWorker:
    """One process's delivery engine; `step()` does one round, `serve()` loops it."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        batch: int = 5000,
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
        self.fanout = FanOut(db, batch=batch, gap_seconds=gap_seconds)
        self.chunk = CHUNK
        # a chunk starts no POST after one timeout's worth (so ends within two); the lease covers that
        self.lease = dt.timedelta(seconds=self.timeout * 3 + 30)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kiln-webhook")
        self.done: queue.Queue[tuple[int, list[Result], bool | None]] = queue.Queue()
        self.wakeup = threading.Event()
        self.inflight: dict[int, Job] = {}
        self.slots: Tally[int] = Tally()
        self.sinks: dict[int, Sink] = {}
        self.delivered = 0
        self.failed = 0
        self._sinks_loaded = -1e9
        self._last_prune = time.monotonic()
        self._last_fan_out = -1e9
        self._backlog = False
        self._fan_out_every = FAN_OUT_SECONDS
        self._undecryptable: set[tuple[int, int]] = set()
        # sink id -> (monotonic time its hold ends, strikes): receivers that stopped answering
        self.held: dict[int, tuple[float, int]] = {}

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
        """New events → pending deliveries (appliance.webhooks.fanout), held sinks left behind."""
        return self.fanout.run(self.open_sinks())

    def open_sinks(self) -> dict[int, Sink]:
        """The sinks not held (see the module docstring)."""
        now = time.monotonic()
        return {k: v for k, v in self.sinks.items() if k not in self.held or self.held[k][0] <= now}

    def note_answer(self, sink_id: int, answered: bool | None) -> None:
        """After a chunk: hold its sink when its receiver did not answer, release it when it did."""
        if answered is None:
            return
        if answered:
            if self.held.pop(sink_id, None) is not None:
                log.info("event sink %d answers again; catching up", sink_id)
            HELD.set(len(self.held))
            return
        strikes = self.held.get(sink_id, (0.0, 0))[1] + 1
        seconds = self.backoff_for(strikes)
        self.held[sink_id] = (time.monotonic() + seconds, strikes)
        HELD.set(len(self.held))
        if strikes == 1:
            log.warning(
                "event sink %d does not answer: held %.0f s (events wait in the log)", sink_id, seconds
            )

    # -- claim, send, record ----------------------------------------------------------------------------

    def claim(self, free: int) -> list[list[tuple[Job, dict[str, Any]]]]:
        """Chunks of due deliveries for at most `free` slots (`per_sink` per sink); attempts counted."""
        now = utcnow()
        rooms: dict[int, int] = {}
        candidates: list[int] = []
        with self.db.read_session() as session:
            for sink_id in self.open_sinks():
                room = min(self.per_sink - self.slots[sink_id], free - sum(rooms.values()))
                if room <= 0:
                    continue
                found = session.scalars(
                    select(Delivery.id)
                    .where(
                        Delivery.sink_id == sink_id,
                        Delivery.status == "pending",
                        Delivery.next_attempt_at <= now,
                    )
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(room * self.chunk)
                ).all()
                found = [i for i in found if i not in self.inflight]
                if found:
                    rooms[sink_id] = min(room, -(-len(found) // self.chunk))
                    candidates += found
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
        if not claimed:
            return []
        with self.db.read_session() as session:
            found_events = session.scalars(
                select(Event).where(Event.id.in_({row[2] for row in claimed}))
            ).all()
            events = {e.id: _event_dict(e) for e in found_events}
        by_sink: dict[int, list[tuple[Job, dict[str, Any]]]] = {}
        for d, s, e, a in sorted(claimed):
            by_sink.setdefault(s, []).append((Job(d, s, e, a), events.get(e, {})))
        chunks: list[list[tuple[Job, dict[str, Any]]]] = []
        for sink_id, items in by_sink.items():
            n = max(rooms.get(sink_id, 1), 1)
            size = -(-len(items) // n)
            chunks += [items[i : i + size] for i in range(0, len(items), size)]
        return chunks

    def submit(self, chunks: Sequence[Sequence[tuple[Job, dict[str, Any]]]]) -> None:
        for chunk in chunks:
            sink_id = chunk[0][0].sink_id
            self.slots[sink_id] += 1
            for job, _ in chunk:
                self.inflight[job.delivery_id] = job
            self.pool.submit(self._send_chunk, sink_id, list(chunk))

    def _send_chunk(self, sink_id: int, chunk: list[tuple[Job, dict[str, Any]]]) -> None:
        results: list[Result] = []
        sink = self.sinks.get(sink_id)
        conn = Connection(sink.url, timeout=self.timeout) if sink is not None else None
        budget = time.monotonic() + self.timeout
        retry_in: float | None = None  # set once the receiver stops answering: the rest wait with it
        answered: bool | None = None  # None: nothing was POSTed
        try:
            for job, event in chunk:
                if retry_in is not None or time.monotonic() > budget:
                    results.append(Result(job, None, retry_in or 0.0))
                    continue
                answer = self._send_one(conn, sink, job, event)
                results.append(Result(job, answer))
                if answer.posted:
                    answered = answered or answer.status_code is not None
                if answer.status_code is None and conn is not None and sink is not None:
                    retry_in = self.backoff_for(job.attempt)
        except Exception as exc:  # a bug here must still record the attempts, not lose them
            log.exception("delivery chunk of sink %d crashed", sink_id)
            done = {r.job.delivery_id for r in results}
            error = Answer(None, f"{type(exc).__name__}: {exc}"[:255], 0.0, posted=False)
            results += [Result(job, error) for job, _ in chunk if job.delivery_id not in done]
        finally:
            if conn is not None:
                conn.close()
        self.done.put((sink_id, results, answered))
        self.wakeup.set()

    def _send_one(
        self, conn: Connection | None, sink: Sink | None, job: Job, event: dict[str, Any]
    ) -> Answer:
        if conn is None or sink is None:
            return Answer(None, "sink disabled or deleted while queued", 0.0, posted=False)
        if not event:
            return Answer(None, f"event {job.event_id} no longer exists", 0.0, posted=False)
        body = event_body(event)
        headers = headers_for(
            sink.secret,
            body,
            event_id=job.event_id,
            action=str(event["action"]),
            delivery_id=job.delivery_id,
            attempt=job.attempt,
        )
        return conn.post(body, headers)

    def record(self, results: Sequence[Result]) -> None:
        """One transaction for a round's results; each write is guarded: a redelivery or a deleted sink
        since the claim wins over this result."""
        if not results:
            return
        now = utcnow()
        tried: list[dict[str, Any]] = []
        untried: list[dict[str, Any]] = []
        for r in results:
            row: dict[str, Any] = {"b_id": r.job.delivery_id, "b_attempt": r.job.attempt}
            if r.answer is None:
                untried.append({**row, "b_next": now + dt.timedelta(seconds=r.retry_in)})
                continue
            status, next_at = "pending", now + dt.timedelta(seconds=self.backoff_for(r.job.attempt))
            POST_SECONDS.observe(r.answer.seconds)
            if r.answer.ok:
                status, next_at = "delivered", now
                self.delivered += 1
            elif r.job.attempt >= self.max_attempts:
                status = "failed"
                self.failed += 1
                log.warning("delivery %d failed for good: %s", r.job.delivery_id, r.answer.error)
            ATTEMPTS.labels("retry" if status == "pending" else status).inc()
            tried.append(
                {
                    **row,
                    "b_status": status,
                    "b_next": next_at,
                    "b_code": r.answer.status_code,
                    "b_error": r.answer.error,
                }
            )
        guard = (
            deliveries_t.c.id == bindparam("b_id"),
            deliveries_t.c.attempts == bindparam("b_attempt"),
            deliveries_t.c.status == "pending",
        )
        with self.db.session() as session:
            if tried:
                session.execute(
                    update(deliveries_t)
                    .where(*guard)
                    .values(
                        status=bindparam("b_status"),
                        next_attempt_at=bindparam("b_next"),
                        last_status_code=bindparam("b_code"),
                        last_error=bindparam("b_error"),
                    ),
                    tried,
                )
            if untried:  # handed back: the attempt did not happen
                session.execute(
                    update(deliveries_t)
                    .where(*guard)
                    .values(attempts=deliveries_t.c.attempts - 1, next_attempt_at=bindparam("b_next")),
                    untried,
                )

    def drain(self) -> int:
        results: list[Result] = []
        while True:
            try:
                sink_id, chunk, answered = self.done.get_nowait()
            except queue.Empty:
                break
            self.slots[sink_id] -= 1
            self.note_answer(sink_id, answered)
            results += chunk
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
        if now - self._last_fan_out >= (0.0 if self._backlog else self._fan_out_every):
            self._last_fan_out = now
            consumed = self.fan_out()
            took = time.monotonic() - now
            # a slow write means the database is busy (an annealer at work): write less often, in
            # bigger batches, rather than queue for its lock again and again
            slow = took > FAN_OUT_SLOW
            self._fan_out_every = (
                min(self._fan_out_every * 2, FAN_OUT_MAX)
                if slow
                else max(self._fan_out_every / 2, FAN_OUT_SECONDS)
            )
            self._backlog = consumed >= self.batch and not slow
            work += consumed
        free = self.workers - sum(self.slots.values())
        if free > 0:
            chunks = self.claim(free)
            self.submit(chunks)
            work += len(chunks)
        if now - self._last_prune > PRUNE_SECONDS:
            self._last_prune = now
            self.prune()
        return work

    def close(self, wait: float | None = None) -> None:
        """Let POSTs under way end (each is bounded by the timeout) and record them."""
        deadline = time.monotonic() + (2 * self.timeout + 1 if wait is None else wait)
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
