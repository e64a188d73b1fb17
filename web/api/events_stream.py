"""GET /events/stream: Server-Sent Events carrying every new Event row, for API clients and the admin pages.

One source for both: the admin pages open an EventSource on this URL and re-fetch the fragment an
event touches, so a page can never show something an API client was not told.

How new rows are noticed: one `EventNotifier` per app polls `max(events.id)` every POLL_SECONDS while
at least one stream is open, and wakes the streams (a threading.Condition) when it grows; each stream
then reads only the rows after the last id it sent. So N open pages cost one indexed query per poll,
plus one small read per stream per change — not N polls. Events are written by other processes too
(annealers, DHCP, discovery), so the database is the channel, not an in-process hook.

Resuming: each message carries `id: <event id>`; a browser's EventSource sends it back as
`Last-Event-ID` when it reconnects, and the stream resumes after it (or after `?since=`). A stream
ends by itself after MAX_STREAM_SECONDS so a thread of a bounded pool (gunicorn gthread) is never held
forever by a forgotten tab; the client reconnects where it left off.

Streams are capped (MAX_STREAMS, app config KILN_SSE_MAX_STREAMS): each holds a server thread, and
gunicorn's gthread pool is small (16). Past the cap the answer is 503 with Retry-After; kiln.js then
falls back to polling GET /events?since= every few seconds, so a page stays live either way.

Known limit: on PostgreSQL two transactions can commit ids out of order (id 11 visible before 10); a
stream that already sent 11 never sends 10. SQLite (one writer at a time) has no such gap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from appliance.db import Database
from appliance.errors import KilnError
from appliance.models import Event
from web.api.endpoint import endpoint
from web.api.schemas import EventOut
from web.context import kiln

log = logging.getLogger(__name__)
bp = Blueprint("events_stream", __name__)

POLL_SECONDS = 0.4
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 300.0
MAX_STREAMS = 10
BATCH = 500
RETRY_MS = 1000


class EventNotifier:
    """Watches max(events.id) while someone listens; `wait_beyond()` blocks until it passes an id."""

    def __init__(self, db: Database, interval: float = POLL_SECONDS) -> None:
        self.db = db
        self.interval = interval
        self._cond = threading.Condition()
        self._latest = -1
        self._listeners = 0
        self._streams = 0
        self._thread: threading.Thread | None = None

    def open_stream(self, limit: int) -> None:
        """Take one of `limit` stream slots or raise StreamsBusy (released by close_stream)."""
        with self._cond:
            if self._streams >= limit:
                raise StreamsBusy(
                    f"{self._streams} event streams are open, the most this server keeps; poll GET /api/v2/events?since= instead"
                )
            self._streams += 1

    def close_stream(self) -> None:
        with self._cond:
            self._streams -= 1

    def read_latest(self) -> int:
        with self.db.read_session() as session:
            return int(session.scalar(select(func.max(Event.id))) or 0)

    def subscribe(self) -> int:
        """Register a listener; returns the newest event id now."""
        latest = self.read_latest()
        with self._cond:
            self._listeners += 1
            self._latest = max(self._latest, latest)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="kiln-event-notifier", daemon=True)
                self._thread.start()
            return self._latest

    def unsubscribe(self) -> None:
        with self._cond:
            self._listeners -= 1

    @property
    def listeners(self) -> int:
        with self._cond:
            return self._listeners

    @property
    def streams(self) -> int:
        with self._cond:
            return self._streams

    def latest(self) -> int:
        with self._cond:
            return self._latest

    def wait_beyond(self, last_id: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._latest > last_id, timeout)
            return self._latest

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._listeners <= 0:
                    self._thread = None
                    return
            try:
                latest = self.read_latest()
            except Exception:  # the database blinked; the streams keep waiting, the next poll retries
                log.exception("event notifier: reading max(events.id) failed")
                latest = -1
            with self._cond:
                if latest > self._latest:
                    self._latest = latest
                    self._cond.notify_all()
            time.sleep(self.interval)


class StreamsBusy(KilnError):
    status = 503
    retry_after = 30.0


def notifier() -> EventNotifier:
    found = current_app.extensions.get("kiln_event_notifier")
    if found is None:
        found = current_app.extensions["kiln_event_notifier"] = EventNotifier(kiln().db)
    assert isinstance(found, EventNotifier)
    return found


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: int | None = Field(
        None, ge=0, description="start after this event id (Last-Event-ID wins); default: from now on"
    )
    action: str | None = Field(
        None, max_length=512, description="comma-separated actions or prefixes ending in '.', e.g. 'node.'"
    )


def _matcher(spec: str | None) -> Any:
    if not spec:
        return lambda action: True
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return lambda action: any(action.startswith(p) if p.endswith(".") else action == p for p in parts)


def format_message(event: Event) -> str:
    payload = EventOut.model_validate(event).model_dump(mode="json")
    return f"id: {event.id}\nevent: kiln\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _start_id(query: StreamQuery, now: int) -> int:
    header = request.headers.get("Last-Event-ID", "").strip()
    if header.isdigit():
        return int(header)
    return query.since if query.since is not None else now


def stream_events(
    db: Database, source: EventNotifier, start: int, wanted: Any, max_seconds: float
) -> Iterator[str]:
    source.subscribe()
    last = start
    deadline = time.monotonic() + max_seconds
    try:
        yield f"retry: {RETRY_MS}\n: resuming after {last}\n\n"
        while time.monotonic() < deadline:
            newest = source.wait_beyond(last, min(KEEPALIVE_SECONDS, max(0.0, deadline - time.monotonic())))
            if newest <= last:
                yield ": keepalive\n\n"
                continue
            with db.read_session() as session:
                rows = list(
                    session.scalars(select(Event).where(Event.id > last).order_by(Event.id).limit(BATCH))
                )
                chunk = [format_message(e) for e in rows if wanted(e.action)]
            if rows:
                last = rows[-1].id
            if chunk:
                yield "".join(chunk)
    finally:
        source.unsubscribe()


@endpoint(
    bp,
    "GET",
    "/events/stream",
    query=StreamQuery,
    summary="New events as Server-Sent Events (text/event-stream); resumes from Last-Event-ID",
)
def events_stream_get(query: StreamQuery) -> Response:
    """Each message: `id: <event id>`, `event: kiln`, `data: <the event as in GET /events>`."""
    source = notifier()
    # fixed now, not when the body starts: an event written between the two must not be skipped
    start = _start_id(query, source.read_latest())
    max_seconds = float(current_app.config.get("KILN_SSE_MAX_SECONDS", MAX_STREAM_SECONDS))
    source.open_stream(int(current_app.config.get("KILN_SSE_MAX_STREAMS", MAX_STREAMS)))
    body = stream_events(kiln().db, source, start, _matcher(query.action), max_seconds)
    response = Response(
        body,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # the server closes every response it started, even one whose body was never read: the slot is
    # given back there, not in the generator (whose `finally` never runs if it never started)
    response.call_on_close(source.close_stream)
    return response
