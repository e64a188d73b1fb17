"""/events: the append-only audit log, read-only over the API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import select

from appliance.errors import NotFound
from appliance.models import Event
from web.api.endpoint import endpoint, read_session
from web.api.paging import page_of, paginate
from web.api.schemas import EventOut, EventQuery

bp = Blueprint("events", __name__)


@endpoint(
    bp, "GET", "/events", query=EventQuery, response=page_of(EventOut), summary="List events, oldest first"
)
def events_get(query: EventQuery) -> dict[str, Any]:
    """Poll for news with `since=<last id you saw>`; filter by action (or 'node.' prefix), subject, actor."""
    stmt = select(Event)
    if query.action is not None:
        if query.action.endswith("."):
            stmt = stmt.where(Event.action.startswith(query.action, autoescape=True))
        else:
            stmt = stmt.where(Event.action == query.action)
    if query.subject_type is not None:
        stmt = stmt.where(Event.subject_type == query.subject_type)
    if query.subject_id is not None:
        stmt = stmt.where(Event.subject_id == query.subject_id)
    if query.actor is not None:
        stmt = stmt.where(Event.actor == query.actor)
    if query.since is not None:
        stmt = stmt.where(Event.id > query.since)
    with read_session() as s:
        return paginate(s, stmt, Event.id, query, EventOut.model_validate)


@endpoint(bp, "GET", "/events/<int:event_id>", response=EventOut, summary="Show an event")
def event_get(event_id: int) -> EventOut:
    with read_session() as s:
        event = s.get(Event, event_id)
        if event is None:
            raise NotFound(f"event {event_id} not found", field="id")
        return EventOut.model_validate(event)
