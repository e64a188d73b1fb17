"""/webhooks: event sinks (create, list, show, change, delete), their deliveries and redelivery.

The secret is write-only: POST and PATCH take it, no answer carries it (only `secret_set`). The work
is done by appliance.webhooks; the `webhooks` service sends.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, Field
from sqlalchemy import select

from appliance.config import Settings
from appliance.errors import NotFound
from appliance.models import Delivery, EventSink
from appliance.webhooks import sinks
from web.api.access import actor
from web.api.endpoint import endpoint, expected_version, read_session, write_session
from web.api.paging import ListQuery, page_of, paginate
from web.api.schemas import VERSION_FIELD, Strict, Timestamp
from web.context import kiln

bp = Blueprint("webhooks", __name__)

SECRET_FIELD = Field(
    min_length=sinks.SECRET_MIN,
    max_length=sinks.SECRET_MAX,
    description="write-only: the HMAC-SHA256 key receivers check X-Kiln-Signature with",
)
FILTER_DESCRIPTION = "action globs, comma-separated: '*', 'noderole.*', 'node.create, node.delete'"


class SinkIn(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(description="http:// or https:// endpoint that receives the POSTs")
    filter: str = Field("*", description=FILTER_DESCRIPTION)
    secret: str = SECRET_FIELD
    enabled: bool = True


class SinkPatch(Strict):
    url: str | None = None
    filter: str | None = Field(None, description=FILTER_DESCRIPTION)
    secret: str | None = Field(None, min_length=sinks.SECRET_MIN, max_length=sinks.SECRET_MAX)
    enabled: bool | None = Field(None, description="re-enabling skips the events recorded while off")
    version: int | None = VERSION_FIELD


class SinkOut(BaseModel):
    id: int
    name: str
    url: str
    filter: str
    enabled: bool
    secret_set: bool
    last_event_id: int = Field(description="events up to this id have been fanned out to this sink")
    deliveries: dict[str, int] = Field(description="deliveries by status")
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class DeliveryOut(BaseModel):
    id: int
    sink_id: int
    event_id: int
    action: str | None = None
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    last_attempt_at: Timestamp | None
    next_attempt_at: Timestamp | None


class DeliveryQuery(ListQuery):
    status: Literal["pending", "delivered", "failed"] | None = None


def _out(sink: EventSink, counts: dict[str, int]) -> SinkOut:
    return SinkOut(
        id=sink.id,
        name=sink.name,
        url=sink.url,
        filter=sink.filter,
        enabled=sink.enabled,
        secret_set=bool(sink.secret_enc),
        last_event_id=sink.last_event_id,
        deliveries=counts,
        version=sink.version,
        created_at=sink.created_at,
        updated_at=sink.updated_at,
    )


def _show(s: Any, sink_id: int) -> SinkOut:
    sink = sinks.get_sink(s, sink_id)
    return _out(sink, sinks.delivery_counts(s, [sink.id]).get(sink.id, {}))


@endpoint(bp, "GET", "/webhooks", query=ListQuery, response=page_of(SinkOut), summary="List event sinks")
def webhooks_get(query: ListQuery) -> dict[str, Any]:
    with read_session() as s:
        page = paginate(s, select(EventSink), EventSink.id, query, lambda sink: sink)
        counts = sinks.delivery_counts(s, [sink.id for sink in page["items"]])
        page["items"] = [_out(sink, counts.get(sink.id, {})) for sink in page["items"]]
        return page


@endpoint(
    bp,
    "POST",
    "/webhooks",
    body=SinkIn,
    response=SinkOut,
    status=201,
    role="admin",
    summary="Add an event sink",
)
def webhook_post(body: SinkIn) -> SinkOut:
    """The sink receives the events recorded from now on whose action matches `filter`, POSTed as JSON
    and signed: `X-Kiln-Signature: sha256=<hex HMAC-SHA256 of the body with secret>`."""
    with write_session() as s:
        sink = sinks.create_sink(
            s,
            _settings(),
            name=body.name,
            url=body.url,
            secret=body.secret,
            filter=body.filter,
            enabled=body.enabled,
            actor=actor(),
        )
        return _out(sink, {})


@endpoint(bp, "GET", "/webhooks/<int:sink_id>", response=SinkOut, summary="Show an event sink")
def webhook_get(sink_id: int) -> SinkOut:
    with read_session() as s:
        return _show(s, sink_id)


@endpoint(
    bp,
    "PATCH",
    "/webhooks/<int:sink_id>",
    body=SinkPatch,
    response=SinkOut,
    role="admin",
    summary="Change an event sink",
)
def webhook_patch(sink_id: int, body: SinkPatch) -> SinkOut:
    with write_session() as s:
        sink = sinks.get_sink(s, sink_id, for_update=True)
        sinks.update_sink(
            s,
            _settings(),
            sink,
            url=body.url,
            filter=body.filter,
            secret=body.secret,
            enabled=body.enabled,
            expected_version=expected_version(body),
            actor=actor(),
        )
        s.flush()
        return _show(s, sink_id)


@endpoint(
    bp,
    "DELETE",
    "/webhooks/<int:sink_id>",
    status=204,
    role="admin",
    summary="Delete an event sink and its deliveries",
)
def webhook_delete(sink_id: int) -> None:
    with write_session() as s:
        sinks.delete_sink(s, sinks.get_sink(s, sink_id, for_update=True), actor=actor())


@endpoint(
    bp,
    "GET",
    "/webhooks/<int:sink_id>/deliveries",
    query=DeliveryQuery,
    response=page_of(DeliveryOut),
    summary="List a sink's deliveries, oldest first",
)
def webhook_deliveries_get(sink_id: int, query: DeliveryQuery) -> dict[str, Any]:
    with read_session() as s:
        sinks.get_sink(s, sink_id)
        stmt = sinks.deliveries_query(sink_id, query.status)
        page = paginate(s, stmt, Delivery.id, query, lambda d: d)
        actions = sinks.event_actions(s, [d.event_id for d in page["items"]])
        page["items"] = [DeliveryOut(**sinks.delivery_row(d, actions.get(d.event_id))) for d in page["items"]]
        return page


@endpoint(
    bp,
    "POST",
    "/webhooks/<int:sink_id>/deliveries/<int:delivery_id>/redeliver",
    response=DeliveryOut,
    summary="Send a delivery again",
)
def webhook_redeliver(sink_id: int, delivery_id: int) -> DeliveryOut:
    """Back to `pending` with a fresh set of attempts: for after a receiver was fixed."""
    with write_session() as s:
        sinks.get_sink(s, sink_id)
        found = s.get(Delivery, delivery_id)
        if found is None or found.sink_id != sink_id:
            raise NotFound(f"delivery {delivery_id} of sink {sink_id} not found", field="id")
        delivery = sinks.redeliver(s, delivery_id, actor=actor())
        s.flush()
        actions = sinks.event_actions(s, [delivery.event_id])
        return DeliveryOut(**sinks.delivery_row(delivery, actions.get(delivery.event_id)))


def _settings() -> Settings:
    return kiln().settings
