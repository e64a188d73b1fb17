"""Fan-out: new events become one `pending` Delivery per matching (sink, event); the sink's cursor
(`last_event_id`) moves past them in the same transaction, by compare-and-set, and (sink, event) is
unique, so two webhook workers never create a delivery twice.

The fan-out never passes an event id that may still be committing (PostgreSQL): see events.IdGaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, insert, select, update

from appliance.db import Database
from appliance.events import IdGaps
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
        self.gaps = IdGaps(ordered=db.is_sqlite, gap_seconds=gap_seconds)

    @property
    def gap_seconds(self) -> float:
        return self.gaps.gap_seconds

    @gap_seconds.setter
    def gap_seconds(self, value: float) -> None:
        self.gaps.gap_seconds = value

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
        upto = self.gaps.settled(low, [e[0] for e in events])
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
