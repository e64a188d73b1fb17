"""Log in and out. The API's own login (web.api.session.login_post) does the work: the same password
check, failed-login throttle, Event and session; this page only adds the form and its CSRF token."""

from __future__ import annotations

import hmac

from flask import Blueprint, make_response, redirect, render_template, request, session, url_for
from pydantic import ValidationError
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance.errors import KilnError
from web.admin.guard import CSRF_FIELD, back, caller
from web.api import access
from web.api.session import LoginIn, login_post

bp = Blueprint("login", __name__)


def _form(message: str | None, status: int, username: str = "") -> WerkzeugResponse:
    page = render_template("admin/login.html", message=message, username=username, next=_next())
    return make_response(page, status)


def _next() -> str:
    wanted = request.values.get("next", "")
    return wanted if wanted.startswith("/admin/") else url_for("admin.dashboard.dashboard")


@bp.get("/login")
def login_form() -> WerkzeugResponse:
    return _form(None, 200)


@bp.post("/login")
def login_submit() -> WerkzeugResponse:
    username = request.form.get("username", "").strip()
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(request.form.get(CSRF_FIELD, ""), expected):
        return _form("The form expired; please try again.", 403, username)
    try:
        login_post(LoginIn(username=username, password=request.form.get("password", "")))
    except ValidationError:
        return _form("Enter a username and a password.", 400, username)
    except access.TooManyAttempts as exc:
        response = _form(exc.message, 429, username)
        response.headers["Retry-After"] = str(int(exc.retry_after + 0.999))
        return response
    except KilnError as exc:
        return _form(exc.message, exc.status, username)
    return redirect(_next())


@bp.post("/logout")
def logout() -> WerkzeugResponse:
    who = caller()
    if who.via == "session":
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(request.form.get(CSRF_FIELD, ""), expected):
            return redirect(back())
    access.end_session()
    return redirect(url_for("admin.login.login_form"))
