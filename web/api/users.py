"""/users (admin only) and /tokens (everyone manages their own; admins anyone's).

No answer ever carries a password hash or a token hash: the Out models do not have those fields.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance import auth, events
from appliance.errors import Conflict, Forbidden, NotFound
from appliance.models import Token, User
from appliance.versions import check_and_bump
from web.api.access import actor, current_caller
from web.api.endpoint import endpoint, expected_version, read_session, write_session
from web.api.paging import ListQuery, page_of, paginate
from web.api.schemas import NewTokenOut, TokenIn, TokenOut, TokenQuery, UserIn, UserOut, UserPatch

bp = Blueprint("users", __name__)


def _user(s: Session, user_id: int, *, for_update: bool = False) -> User:
    stmt = select(User).where(User.id == user_id)
    user = s.scalar(stmt.with_for_update() if for_update else stmt)
    if user is None:
        raise NotFound(f"user {user_id} not found", field="id")
    return user


def _other_active_admins(s: Session, user_id: int) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == "admin", User.disabled.is_(False), User.id != user_id)
        )
        or 0
    )


@endpoint(bp, "GET", "/users", query=ListQuery, response=page_of(UserOut), role="admin", summary="List users")
def users_get(query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        return paginate(s, select(User), User.id, query, UserOut.model_validate)


@endpoint(
    bp, "POST", "/users", body=UserIn, response=UserOut, status=201, role="admin", summary="Create a user"
)
def user_post(body: UserIn) -> UserOut:
    with write_session() as s:
        user = auth.create_user(s, body.username, body.password, body.role, actor=actor())
        user.email, user.disabled = body.email, body.disabled
        return UserOut.model_validate(user)


@endpoint(bp, "GET", "/users/<int:user_id>", response=UserOut, role="admin", summary="Show a user")
def user_get(user_id: int) -> UserOut:
    with read_session() as s:
        return UserOut.model_validate(_user(s, user_id))


@endpoint(
    bp,
    "PATCH",
    "/users/<int:user_id>",
    body=UserPatch,
    response=UserOut,
    role="admin",
    summary="Change a user's role, password, e-mail or disabled flag",
)
def user_patch(user_id: int, body: UserPatch) -> UserOut:
    with write_session() as s:
        user = _user(s, user_id, for_update=True)
        check_and_bump(user, expected_version(body), f"user {user.username}")
        fields = body.model_dump(exclude_unset=True, exclude={"version"})
        demoted = fields.get("role", "admin") != "admin" or fields.get("disabled") is True
        if user.role == "admin" and demoted and _other_active_admins(s, user.id) == 0:
            raise Conflict("this is the last active admin; make another admin first", field="role")
        if fields.get("password") is not None:
            user.password_hash = auth.hash_password(fields.pop("password"))
            fields["password"] = "changed"
        for key in ("role", "email", "disabled"):
            if key in fields:
                setattr(user, key, fields[key])
        s.flush()
        events.record(
            s,
            "user.update",
            subject_type="user",
            subject_id=user.id,
            actor=actor(),
            message=f"user {user.username}: {', '.join(sorted(fields)) or 'no change'}",
            data={"changes": {k: v for k, v in fields.items() if k != "password"}},
        )
        return UserOut.model_validate(user)


@endpoint(
    bp, "DELETE", "/users/<int:user_id>", status=204, role="admin", summary="Delete a user and their tokens"
)
def user_delete(user_id: int) -> None:
    with write_session() as s:
        user = _user(s, user_id, for_update=True)
        if user.id == current_caller().id:
            raise Conflict("you cannot delete yourself", field="id")
        if user.role == "admin" and _other_active_admins(s, user.id) == 0:
            raise Conflict("this is the last active admin", field="id")
        version = expected_version()
        if version is not None:
            check_and_bump(user, version, f"user {user.username}")
        for token in s.scalars(select(Token).where(Token.user_id == user.id)):
            s.delete(token)
        s.delete(user)
        events.record(
            s,
            "user.delete",
            subject_type="user",
            subject_id=user_id,
            actor=actor(),
            message=f"user {user.username}",
        )


# ---- tokens


def _may_touch(user_id: int) -> None:
    caller = current_caller()
    if caller.id != user_id and caller.role != "admin":
        raise Forbidden("only admins may manage other users' tokens", field="user_id")


@endpoint(bp, "GET", "/tokens", query=TokenQuery, response=page_of(TokenOut), summary="List API tokens")
def tokens_get(query: TokenQuery) -> dict[str, Any]:
    """Your own tokens; admins see everyone's (or one user's with `user_id`)."""
    caller = current_caller()
    stmt = select(Token)
    if caller.role != "admin":
        stmt = stmt.where(Token.user_id == caller.id)
    if query.user_id is not None:
        stmt = stmt.where(Token.user_id == query.user_id)
    with read_session() as s:
        return paginate(s, stmt, Token.id, query, TokenOut.model_validate)


@endpoint(
    bp,
    "POST",
    "/tokens",
    body=TokenIn,
    response=NewTokenOut,
    status=201,
    role="readonly",
    summary="Issue an API token (its text is in this answer only)",
)
def token_post(body: TokenIn) -> NewTokenOut:
    user_id = body.user_id if body.user_id is not None else current_caller().id
    _may_touch(user_id)
    ttl = dt.timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with write_session() as s:
        token, clear = auth.issue_token(s, _user(s, user_id), body.name, ttl, actor=current_caller().username)
        return NewTokenOut(**TokenOut.model_validate(token).model_dump(), token=clear)


@endpoint(bp, "DELETE", "/tokens/<int:token_id>", status=204, role="readonly", summary="Revoke an API token")
def token_delete(token_id: int) -> None:
    with write_session() as s:
        token = s.get(Token, token_id)
        if token is None:
            raise NotFound(f"token {token_id} not found", field="id")
        _may_touch(token.user_id)
        s.delete(token)
        events.record(
            s,
            "token.delete",
            subject_type="user",
            subject_id=token.user_id,
            actor=actor(),
            message=f"token {token.prefix}… revoked",
        )
