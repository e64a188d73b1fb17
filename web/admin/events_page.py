"""The audit log: every Event, newest first, filtered by action (or prefix), subject and actor, paged
by id (`before=`) so a page costs the same at event 10 and event 10 million. Live: new events appear
on the first page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for
from sqlalchemy import Select, select

from appliance.models import Event
from web.admin.guard import page
from web.admin.rendering import render
from web.context import kiln

bp = Blueprint("events_page", __name__)

PAGE = 100


def _filtered(stmt: Select[Any], args: dict[str, str]) -> Select[Any]:
    action = args.get("action", "").strip()
    if action:
        if action.endswith("."):
            stmt = stmt.where(Event.action.startswith(action, autoescape=True))
        else:
            stmt = stmt.where(Event.action == action)
    if args.get("subject_type"):
        stmt = stmt.where(Event.subject_type == args["subject_type"])
    if args.get("subject_id", "").isdigit():
        stmt = stmt.where(Event.subject_id == int(args["subject_id"]))
    if args.get("actor"):
        stmt = stmt.where(Event.actor == args["actor"])
    return stmt


@bp.get("/events")
@page
def event_list() -> str:
    args = {
        k: request.args[k] for k in ("action", "subject_type", "subject_id", "actor") if request.args.get(k)
    }
    before = request.args.get("before", "")
    stmt = _filtered(select(Event), args)
    if before.isdigit():
        stmt = stmt.where(Event.id < int(before))
    with kiln().db.read_session() as s:
        events: list[Event] = list(s.scalars(stmt.order_by(Event.id.desc()).limit(PAGE + 1)))
    more = len(events) > PAGE
    events = events[:PAGE]
    query: dict[str, Any] = {**args, "fragment": "table"}
    live_url = url_for("admin.events_page.event_list", **query)
    return render(
        "admin/events.html",
        {"table": "admin/_events_table.html"},
        events=events,
        args=args,
        older=events[-1].id if more and events else None,
        first_page=not before.isdigit(),
        live_url=live_url,
    )
