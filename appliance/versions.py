"""Optimistic concurrency for Versioned rows: the API's ETag and `version` field, checked in one place."""

from __future__ import annotations

from typing import Protocol

from appliance.errors import Conflict


class _Versioned(Protocol):
    version: int


def check_and_bump(row: _Versioned, expected: int | None, what: str) -> None:
    """Refuse a change made against a stale copy, then advance the version.

    Callers load `row` inside the write transaction (BEGIN IMMEDIATE on SQLite, FOR UPDATE on
    PostgreSQL), so nobody can change it between this check and the commit.
    """
    if expected is not None and expected != row.version:
        raise Conflict(
            f"{what} was changed by someone else (version {row.version}, you sent {expected}); reload it",
            field="version",
        )
    row.version = row.version + 1
