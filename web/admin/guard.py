"""Who may see and press what on the admin pages: the API's session, roles and CSRF token, for forms.

Pages reuse web.api.access (the same session cookie, the same `csrf` token in the session, the same
role ranks); the only difference is where the token travels: an HTML form sends it as the hidden
`csrf_token` field, a fetch() as the X-CSRF-Token header. Both are accepted, compared in constant time.

- `@page()`: a logged-in user (any role) or a redirect to the login page;
- `@action(role)`: a POST by a user holding `role` with the session's CSRF token. A KilnError raised by
  the action (bad input, conflict, BMC unreachable...) becomes a message on the page it came from;
  a missing right or token is a 403 page — the server refuses whatever the buttons showed.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import flash, redirect, request, session, url_for
from pydantic import ValidationError
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance import auth
from appliance.errors import Forbidden, KilnError, Unauthorized
from web.api import access
from web.api.access import Caller
from web.api.errors import validation_field

CSRF_FIELD = "csrf_token"


class LoginRequired(Unauthorized):
    """Raised by page views; the blueprint answers with a redirect to the login page."""


def caller() -> Caller:
    found = access.authenticate()
    if found is None:
        raise LoginRequired("log in to see this page")
    return found


def may(role: str) -> bool:
    found = access.authenticate()
    return found is not None and auth.may(found.role, role)


def check_csrf(who: Caller) -> None:
    if who.via != "session":
        return  # a bearer token is never sent by a browser on its own
    sent = request.form.get(CSRF_FIELD) or request.headers.get(access.CSRF_HEADER, "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise Forbidden("this form is missing its security token (CSRF); reload the page and try again")


def require(role: str) -> Caller:
    who = caller()
    if not auth.may(who.role, role):
        raise Forbidden(f"this needs the {role} role; you are {who.username} ({who.role})")
    check_csrf(who)
    return who


def back(default: str = "admin.dashboard") -> str:
    """Where to send the browser after an action: the form's `next`, else its Referer, same site only."""
    for candidate in (request.form.get("next"), request.referrer):
        if candidate:
            parts = urlsplit(candidate)
            if parts.path.startswith("/admin/") and (not parts.netloc or parts.netloc == request.host):
                return parts.path + (f"?{parts.query}" if parts.query else "")
    return url_for(default)


def page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Any logged-in user may look."""

    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Any:
        caller()
        return view(**kwargs)

    return wrapper


def admin_page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only admins may even look (the users page)."""

    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Any:
        who = caller()
        if not auth.may(who.role, "admin"):
            raise Forbidden(f"only admins may see this page; you are {who.username} ({who.role})")
        return view(**kwargs)

    return wrapper


def action(role: str = "operator") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            who = require(role)
            try:
                return view(who, **kwargs)
            except (Forbidden, Unauthorized):
                raise
            except KilnError as exc:
                flash(_readable(exc), "error")
                return redirect(back())
            except ValidationError as exc:
                flash(validation_field(exc)[1], "error")
                return redirect(back())

        return wrapper

    return decorate


def _readable(exc: KilnError) -> str:
    return f"{exc.message} ({exc.field})" if exc.field and exc.field not in exc.message else exc.message


def done(message: str, target: str | None = None) -> WerkzeugResponse:
    flash(message, "ok")
    return redirect(target or back())
