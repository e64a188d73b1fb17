"""Users, password hashing (argon2) and API tokens (only their SHA-256 is stored)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from appliance import events
from appliance.errors import Conflict, InvalidInput, Unauthorized
from appliance.models import USER_ROLES, Token, User, utcnow

_hasher = PasswordHasher()
TOKEN_PREFIX = "kiln_"
ROLE_RANK = {"readonly": 0, "operator": 1, "admin": 2}


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise InvalidInput("password", "must be at least 8 characters")
    return _hasher.hash(password)


def verify_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(session: Session, username: str, password: str, role: str, *, actor: str = "system") -> User:
    if role not in USER_ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(USER_ROLES)}")
    if (
        not username
        or len(username) > 64
        or not username.replace("-", "").replace("_", "").replace(".", "").isalnum()
    ):
        raise InvalidInput("username", "1-64 letters, digits, '-', '_' or '.'")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user '{username}' already exists", field="username")
    user = User(username=username, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    events.record(
        session,
        "user.create",
        subject_type="user",
        subject_id=user.id,
        actor=actor,
        message=f"user {username} ({role})",
    )
    return user


def authenticate(session: Session, username: str, password: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or user.disabled or not verify_password(user, password):
        raise Unauthorized("wrong username or password")
    return user


def _digest(clear: str) -> str:
    return hashlib.sha256(clear.encode()).hexdigest()


def issue_token(
    session: Session,
    user: User,
    name: str = "",
    ttl: dt.timedelta | None = None,
    *,
    actor: str | None = None,
) -> tuple[Token, str]:
    """A new API token for `user`; the clear text is returned once and never stored."""
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token(
        user_id=user.id,
        name=name,
        token_hash=_digest(clear),
        prefix=clear[: len(TOKEN_PREFIX) + 6],
        expires_at=(utcnow() + ttl) if ttl else None,
    )
    session.add(token)
    session.flush()
    events.record(
        session,
        "token.create",
        subject_type="user",
        subject_id=user.id,
        actor=actor or user.username,
        message=f"token {token.prefix}… for {user.username}",
    )
    return token, clear


# last_used_at is written at most this often per token: a write per API call would put every read
# behind SQLite's write lock, and "used in the last minute" is what an operator auditing tokens needs
TOKEN_USE_RESOLUTION = dt.timedelta(seconds=60)


def token_and_user(session: Session, clear: str) -> tuple[Token, User]:
    """The valid token `clear` and its user, or Unauthorized."""
    token = session.scalar(select(Token).where(Token.token_hash == _digest(clear)))
    if token is None:
        raise Unauthorized("unknown API token")
    if token.expires_at is not None and token.expires_at.replace(tzinfo=dt.UTC) < utcnow():
        raise Unauthorized("API token expired")
    user = session.get(User, token.user_id)
    if user is None or user.disabled:
        raise Unauthorized("API token's user is disabled")
    return token, user


def user_for_token(session: Session, clear: str) -> User:
    return token_and_user(session, clear)[1]


def use_is_stale(token: Token, now: dt.datetime | None = None) -> bool:
    """True when the token's last_used_at is older than TOKEN_USE_RESOLUTION (or unset)."""
    if token.last_used_at is None:
        return True
    return (now or utcnow()) - token.last_used_at.replace(tzinfo=dt.UTC) >= TOKEN_USE_RESOLUTION


def record_token_use(session: Session, token_id: int, now: dt.datetime | None = None) -> None:
    """Set last_used_at, unless another request already did within TOKEN_USE_RESOLUTION."""
    now = now or utcnow()
    session.execute(
        update(Token)
        .where(
            Token.id == token_id,
            or_(Token.last_used_at.is_(None), Token.last_used_at < now - TOKEN_USE_RESOLUTION),
        )
        .values(last_used_at=now)
    )


def may(user_role: str, needed: str) -> bool:
    return ROLE_RANK.get(user_role, -1) >= ROLE_RANK[needed]
