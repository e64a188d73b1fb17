"""Keyset pagination: `?limit=N&cursor=...` → `{"items": [...], "next": cursor | null}`.

The cursor is opaque to clients (base64 of the last id seen); keyset rather than OFFSET so that a page
stays correct while rows are added and costs the same on page 1 and page 1000.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from appliance.errors import InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
M = TypeVar("M", bound=BaseModel)


class ListQuery(BaseModel):
    """Query parameters every list endpoint accepts."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="page size")
    cursor: str | None = Field(None, description="the `next` value of the previous page")


_pages: dict[type[BaseModel], type[BaseModel]] = {}


def page_of(item: type[BaseModel]) -> type[BaseModel]:
    """The response model of a list of `item` (one class per item model, named `<Item>Page`)."""
    if item not in _pages:
        _pages[item] = create_model(
            f"{item.__name__}Page",
            items=(list[item], ...),  # type: ignore[valid-type]
            next=(str | None, Field(None, description="cursor of the next page; null on the last page")),
        )
    return _pages[item]


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("cursor", "not a cursor this API gave out") from exc
    if not isinstance(after, int):
        raise InvalidInput("cursor", "not a cursor this API gave out")
    return after


def paginate(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[Any],
    params: ListQuery,
    render: Callable[[Any], M],
) -> dict[str, Any]:
    if params.cursor:
        query = query.where(id_column > decode_cursor(params.cursor))
    rows: Sequence[Any] = session.scalars(query.order_by(id_column).limit(params.limit + 1)).all()
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    return {
        "items": [render(row) for row in rows],
        "next": encode_cursor(rows[-1].id) if more and rows else None,
    }
