"""The one way to write an Event: every mutation in Kiln calls record()."""

from __future__ import annotations

import time
from collections.abc import Sequence
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


class IdGaps:
    """How far a reader of the event log may go without skipping an event still being committed.

    PostgreSQL hands out event ids before commit, so id 11 can be visible while 10 is still being
    committed. `settled()` stops before such a hole until it fills or has stayed open `gap_seconds`
    (a rolled-back transaction leaves one for good; an event committed later than that after a newer
    one is passed over). SQLite commits one writer at a time, so its ids never arrive out of order.
    Used by the webhook fan-out and the role-hook runner, each with its own cursor.
    """

    def __init__(self, *, ordered: bool, gap_seconds: float) -> None:
        self.ordered = ordered
        self.gap_seconds = gap_seconds
        self._opened: dict[int, float] = {}

    def settled(self, last: int, ids: Sequence[int]) -> int:
        """The highest of `ids` (ascending, all > `last`) a reader may pass: before the first young hole."""
        if self.ordered:
            return ids[-1]
        now = time.monotonic()
        expected = last + 1
        for event_id in ids:
            while expected < event_id:
                opened = self._opened.setdefault(expected, now)
                if now - opened < self.gap_seconds:
                    return expected - 1
                expected += 1
            expected = event_id + 1
        self._opened = {i: t for i, t in self._opened.items() if i > ids[-1]}
        return ids[-1]
