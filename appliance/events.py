"""The one way to write an Event: every mutation in Kiln calls record()."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from appliance.models import Event

# Keys that must never reach an event, a log or an API answer.
SECRET_KEYS = frozenset({"password", "password_hash", "secret", "token", "bmc_password", "bmc_password_enc"})


def scrub(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with secret-looking keys masked, recursively."""
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECRET_KEYS or key.endswith("_password") or key.endswith("_secret"):
            clean[key] = "***"
        elif isinstance(value, dict):
            clean[key] = scrub(value)
        else:
            clean[key] = value
    return clean


def record(
    session: Session,
    action: str,
    *,
    subject_type: str = "",
    subject_id: int | None = None,
    actor: str = "system",
    message: str = "",
    data: dict[str, Any] | None = None,
) -> Event:
    event = Event(
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        actor=actor,
        message=message,
        data=scrub(data or {}),
    )
    session.add(event)
    return event
