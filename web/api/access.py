"""Who is calling and what they may do: Bearer tokens, session cookies, roles and CSRF.

- `Authorization: Bearer kiln_...` (appliance.auth tokens): for scripts; no CSRF token needed, since a
  browser never attaches it on its own.
- Session cookie from `POST /api/v2/login`: for the admin pages. Every mutation made with the cookie
  must carry the session's CSRF token in the `X-CSRF-Token` header (the login answer and
  `GET /api/v2/csrf` give it), because a browser sends the cookie on cross-site requests too.
- Roles: any user may read; `operator` or `admin` may change; `admin` alone manages users.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from flask import g, request, session

from appliance import auth
from appliance.errors import Forbidden, KilnError, Unauthorized
from appliance.models import User
from web.context import kiln
from web.observability import set_user

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    id: int
    username: str
    role: str
    via: str  # "token" | "session"


class TooManyAttempts(KilnError):
    status = 429

    def __init__(self, message: str, retry_after: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


def _load(user: User | None, via: str) -> Caller:
    if user is None or user.disabled:
        raise Unauthorized("your session has ended; log in again")
    return Caller(user.id, user.username, user.role, via)


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


def authenticate() -> Caller | None:
    """The caller of this request, or None when it presents no credentials at all."""
    if "kiln_caller" in g:
        caller: Caller = g.kiln_caller
        return caller
    header = request.headers.get("Authorization", "")
    caller_or_none: Caller | None = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        with kiln().db.read_session() as s:
            token, token_user = auth.token_and_user(s, value.strip())
            caller_or_none = _load(token_user, "token")
            stale = auth.use_is_stale(token)
        if stale:
            with kiln().db.session() as w:
                auth.record_token_use(w, token.id)
    elif "uid" in session:
        with kiln().db.read_session() as s:
            user = s.get(User, session["uid"])
            # a password change (or reset by an admin) ends every session opened with the old one
            if user is not None and not hmac.compare_digest(session.get("pw", ""), _fingerprint(user)):
                user = None
            caller_or_none = _load(user, "session")
    if caller_or_none is not None:
        g.kiln_caller = caller_or_none
        set_user(caller_or_none.username)
    return caller_or_none


def require(role: str) -> Caller:
    """The caller, checked to hold `role` (and, for cookie mutations, to present the CSRF token)."""
    caller = authenticate()
    if caller is None:
        raise Unauthorized("log in or send 'Authorization: Bearer <token>'")
    if not auth.may(caller.role, role):
        raise Forbidden(f"needs the {role} role (you are {caller.role})")
    if caller.via == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header", field=CSRF_HEADER)
    return caller


def current_caller() -> Caller:
    caller = authenticate()
    if caller is None:
        raise Unauthorized("log in or send 'Authorization: Bearer <token>'")
    return caller


def actor() -> str:
    """The name written into Events for this request's changes."""
    return current_caller().username


def start_session(user: User) -> str:
    """Log `user` in on this browser; returns the session's CSRF token."""
    session.clear()
    session["uid"] = user.id
    session["pw"] = _fingerprint(user)
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True
    g.kiln_caller = Caller(user.id, user.username, user.role, "session")
    set_user(user.username)
    return str(session["csrf"])


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def end_session() -> None:
    session.clear()
