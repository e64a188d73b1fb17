"""Admin pages under /admin/: server-rendered Jinja pages, one nested blueprint per page group.

The pages read through the same appliance functions as the API and change things through them too
(nodes, power, deployments, IPAM); they never hold logic of their own beyond layout. Live updates
come from the API's SSE stream (/api/v2/events/stream): kiln.js re-fetches the fragment of a page
that an event touches (each fragment is the same view with `?fragment=<name>`).

Errors show as pages or flashed messages, never a traceback: the handlers below cover every admin
view (Flask looks handlers up on the nested blueprints' parents too).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, make_response, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance.errors import KilnError, Unauthorized
from appliance.models import Event
from web.admin import (
    catalog,
    dashboard,
    deployments,
    events_page,
    login,
    networks,
    node_detail,
    nodes,
    rendering,
    users,
)
from web.admin.guard import CSRF_FIELD, may
from web.api import access
from web.context import kiln
from web.observability import request_info

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")
for _module in (
    rendering,
    login,
    dashboard,
    nodes,
    node_detail,
    deployments,
    networks,
    catalog,
    events_page,
    users,
):
    bp.register_blueprint(_module.bp)


@bp.context_processor
def _page_context() -> dict[str, Any]:
    me = None
    try:
        me = access.authenticate()
    except KilnError:
        me = None
    return {
        "me": me,
        "can_operate": may("operator"),
        "is_admin": may("admin"),
        "csrf_field_name": CSRF_FIELD,
        "csrf_token": access.csrf_token,
        "last_event_id": _last_event_id,
    }


def _last_event_id() -> int:
    """Where kiln.js starts polling /api/v2/events if the stream is refused (only base.html asks)."""
    with kiln().db.read_session() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


def _error_page(status: int, title: str, message: str) -> Response:
    body = render_template(
        "admin/error.html",
        status=status,
        title=title,
        message=message,
        request_id=request_info.get().request_id,
    )
    return make_response(body, status)


@bp.errorhandler(Unauthorized)
def _login_first(exc: Unauthorized) -> Response | WerkzeugResponse:
    if request.method == "GET" and not request.args.get("fragment"):
        return redirect(url_for("admin.login.login_form", next=request.full_path.rstrip("?")))
    return _error_page(401, "Log in again", exc.message)


@bp.errorhandler(KilnError)
def _kiln_error(exc: KilnError) -> Response:
    if exc.status >= 500:
        log.error("%s on %s: %s", type(exc).__name__, request.path, exc.message)
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 400: "Bad request"}
    return _error_page(exc.status, titles.get(exc.status, "Error"), exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _error_page(exc.code or 500, exc.name, exc.description or exc.name)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return _error_page(500, "Something went wrong", "The server hit an unexpected error; it is in the log.")
