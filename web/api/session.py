"""Log in and out with a session cookie, fetch the CSRF token, see who you are."""

from __future__ import annotations

import logging

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field

from appliance import auth, events
from appliance.errors import Unauthorized
from appliance.models import User
from web.api import access
from web.api.endpoint import endpoint, write_session
from web.api.schemas import UserOut
from web.context import kiln

log = logging.getLogger(__name__)
bp = Blueprint("session", __name__)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="send it as X-CSRF-Token with every change made with this session")


class CsrfOut(BaseModel):
    csrf_token: str


@endpoint(
    bp, "POST", "/login", body=LoginIn, response=LoginOut, public=True, summary="Log in (session cookie)"
)
def login_post(body: LoginIn) -> LoginOut:
    """Failed attempts are throttled per client address and per username (429 with Retry-After)."""
    throttle = kiln().throttle
    keys = (f"ip:{request.remote_addr}", f"user:{body.username}")
    wait = throttle.retry_after(*keys)
    if wait > 0:
        raise access.TooManyAttempts(f"too many failed logins; try again in {int(wait + 0.999)} s", wait)
    with write_session() as s:
        try:
            user = auth.authenticate(s, body.username, body.password)
        except Unauthorized:
            throttle.failed(*keys)
            log.warning("failed login for %r from %s", body.username, request.remote_addr)
            raise
        throttle.succeeded(*keys)
        events.record(
            s,
            "user.login",
            subject_type="user",
            subject_id=user.id,
            actor=user.username,
            message=f"{user.username} logged in from {request.remote_addr}",
        )
        out = UserOut.model_validate(user, from_attributes=True)
    return LoginOut(user=out, csrf_token=access.start_session(user))


@endpoint(bp, "POST", "/logout", status=204, public=True, summary="End the session")
def logout_post() -> None:
    access.end_session()


@endpoint(bp, "GET", "/csrf", response=CsrfOut, summary="The CSRF token of this session")
def csrf_get() -> CsrfOut:
    return CsrfOut(csrf_token=access.csrf_token())


@endpoint(bp, "GET", "/me", response=UserOut, summary="The logged-in user")
def me_get() -> UserOut:
    caller = access.current_caller()
    with kiln().db.read_session() as s:
        return UserOut.model_validate(s.get(User, caller.id), from_attributes=True)
