"""The dashboard: nodes and node-roles by state, boot activity (DHCP leases and discoveries per
minute over the last half hour), annealer heartbeats and the latest events. Each block is a live
fragment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.annealer import states
from appliance.models import AnnealerHeartbeat, Event, Lease, Node, NodeRole, utcnow
from appliance.nodes import NODE_STATES
from web.admin.guard import page
from web.admin.rendering import render
from web.context import kiln

bp = Blueprint("dashboard", __name__)

MINUTES = 30
MAX_SAMPLES = 200_000


def _per_minute(moments: Iterable[dt.datetime], now: dt.datetime) -> list[int]:
    buckets = [0] * MINUTES
    for moment in moments:
        aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        age = int((now - aware).total_seconds() // 60)
        if 0 <= age < MINUTES:
            buckets[MINUTES - 1 - age] += 1
    return buckets


def _counts(session: Session, column: Any) -> dict[str, int]:
    return {k: int(v) for k, v in session.execute(select(column, func.count()).group_by(column))}


def dashboard_context(session: Session) -> dict[str, Any]:
    now = utcnow()
    since = now - dt.timedelta(minutes=MINUTES)
    leases = session.scalars(select(Lease.starts_at).where(Lease.starts_at >= since).limit(MAX_SAMPLES))
    discoveries = session.scalars(
        select(Event.at).where(Event.action == "node.discovered", Event.at >= since).limit(MAX_SAMPLES)
    )
    lease_series = _per_minute(leases, now)
    discovery_series = _per_minute(discoveries, now)
    return {
        "node_states": NODE_STATES,
        "node_counts": _counts(session, Node.state),
        "node_total": int(session.scalar(select(func.count()).select_from(Node)) or 0),
        "role_states": states.STATES,
        "role_counts": _counts(session, NodeRole.state),
        "lease_series": lease_series,
        "discovery_series": discovery_series,
        "active_leases": int(
            session.scalar(select(func.count()).select_from(Lease).where(Lease.state == "active")) or 0
        ),
        "annealers": list(session.scalars(select(AnnealerHeartbeat).order_by(AnnealerHeartbeat.name))),
        "events": list(session.scalars(select(Event).order_by(Event.id.desc()).limit(15))),
        "minutes": MINUTES,
    }


@bp.get("/")
@page
def dashboard() -> str:
    with kiln().db.read_session() as s:
        context = dashboard_context(s)
    fragments = {
        "counts": "admin/_dash_counts.html",
        "activity": "admin/_dash_activity.html",
        "events": "admin/_dash_events.html",
    }
    return render("admin/dashboard.html", fragments, base_url=url_for("admin.dashboard.dashboard"), **context)
