"""Fan-out: new events become one `pending` Delivery per matching (sink, event); the sink's cursor
(`last_event_id`) moves past them in the same transaction, by compare-and-set, and (sink, event) is
unique, so two webhook workers never create a delivery twice.

PostgreSQL hands out event ids before commit, so id 11 can be visible while 10 is still being
committed. The fan-out stops before such a hole until it fills or has stayed open `gap_seconds`
(a rolled-back transaction leaves one for good); an event committed later than that after a newer one
is not delivered. SQLite commits one writer at a time, so its ids never arrive out of order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, insert, select, update

from appliance.db import Database
from appliance.models import Delivery, Event, EventSink, utcnow
from appliance.webhooks.sinks import matches


@dataclass(frozen=True)
class Sink:
    id: int
    name: str
    url: str
    secret: bytes
    patterns: tuple[str, ...]
    version: int


sinks_t = cast(Table, EventSink.__table__)
deliveries_t = cast(Table, Delivery.__table__)


class FanOut:
    def __init__(self, db: Database, *, batch: int, gap_seconds: float) -> None:
        self.db = db
        self.batch = batch
        self.gap_seconds = gap_seconds
        self._gaps: dict[int, float] = {}

    def run(self, sinks: dict[int, Sink]) -> int:
        """New events → pending deliveries. Returns the number of events read past the oldest cursor."""
        if not sinks:
            return 0
        with self.db.read_session() as session:
            cursors: dict[int, int] = {
                sink_id: last
                for sink_id, last in session.execute(
                    select(EventSink.id, EventSink.last_event_id).where(
                        EventSink.enabled.is_(True), EventSink.id.in_(list(sinks))
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
        # rows are built before the write transaction: on SQLite the annealer waits for every moment
        # it is held, longer still if this process is descheduled inside it
        now = utcnow()
        plans: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        for sink_id, last in cursors.items():
            sink = sinks.get(sink_id)
            if sink is None or last >= upto:
                continue
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
            plans[sink_id] = (last, rows)
        with self.db.session() as session:
            for sink_id, (last, rows) in plans.items():
                moved = cast(
                    CursorResult[Any],
                    session.execute(
                        update(sinks_t)
                        .where(sinks_t.c.id == sink_id, sinks_t.c.last_event_id == last)
                        # the cursor is bookkeeping: it must not look like an operator's change
                        .values(last_event_id=upto, updated_at=sinks_t.c.updated_at)
                    ),
                ).rowcount
                if not moved:
                    continue  # another worker moved this cursor first and fans these events out
                if rows:
                    session.execute(insert(deliveries_t), rows)
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
