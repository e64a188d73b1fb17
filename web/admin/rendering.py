"""Rendering shared by the admin pages: whole page or one fragment of it, and the template filters.

A live page is a set of fragments; `render()` answers `?fragment=<name>` with just that part, so
kiln.js can swap it in when an event arrives, and the full page is the same templates included.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Blueprint, render_template, request

from appliance.errors import InvalidInput

bp = Blueprint("rendering", __name__)

STATE_CLASSES = {
    # node-role states
    "proposed": "st-proposed",
    "todo": "st-todo",
    "transition": "st-transition",
    "active": "st-active",
    "blocked": "st-blocked",
    "error": "st-error",
    # node states
    "new": "st-proposed",
    "discovered": "st-todo",
    "annealing": "st-transition",
    "ready": "st-active",
    "off": "st-blocked",
    # deployments, power
    "committed": "st-active",
    "on": "st-active",
}


def render(template: str, fragments: dict[str, str] | None = None, **context: Any) -> str:
    name = request.args.get("fragment")
    if name:
        if not fragments or name not in fragments:
            raise InvalidInput("fragment", f"this page has no fragment '{name}'")
        return render_template(fragments[name], **context)
    return render_template(template, **context)


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timezone-aware columns back naive (in UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@bp.app_template_filter("ago")
def ago(moment: dt.datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = int((dt.datetime.now(dt.UTC) - _aware(moment)).total_seconds())
    if seconds < 0:
        return "in " + _span(-seconds)
    return _span(seconds) + " ago"


def _span(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@bp.app_template_filter("when")
def when(moment: dt.datetime | None) -> str:
    return "—" if moment is None else _aware(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("bytes")
def human_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


@bp.app_template_filter("state_class")
def state_class(state: str | None) -> str:
    return STATE_CLASSES.get(state or "", "st-unknown")


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
