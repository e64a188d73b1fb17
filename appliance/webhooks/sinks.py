"""Event sinks: create, change, delete, list; their deliveries; redelivery.

A sink's secret is stored encrypted with the BMC credential key (appliance.bmc.credentials) and only
ever decrypted by the delivery worker to sign a body; no function here returns it, and the Events
these functions write never carry it.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from appliance.bmc.credentials import decrypt_password, encrypt_password
from appliance.config import Settings
from appliance.errors import ConfigError, Conflict, InvalidInput, NotFound
from appliance.events import record
from appliance.models import Delivery, Event, EventSink, utcnow
from appliance.versions import check_and_bump

DELIVERY_STATES = ("pending", "delivered", "failed")
SECRET_MIN, SECRET_MAX = 16, 200  # 200 characters still fit secret_enc's 512 once Fernet-encrypted
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def parse_filter(text: str) -> tuple[str, ...]:
    """`noderole.*, node.create` → its globs; InvalidInput for anything but action globs."""
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise InvalidInput("filter", "give at least one action glob, e.g. 'noderole.*' or '*'")
    if len(text) > 255:
        raise InvalidInput("filter", "is longer than 255 characters")
    for pattern in patterns:
        if not _PATTERN.match(pattern):
            raise InvalidInput("filter", f"'{pattern}' is not an action glob (letters, digits, . _ - * ? [])")
    return patterns


def matches(patterns: Sequence[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action, p) for p in patterns)


def check_url(url: str) -> str:
    if len(url) > 2048:
        raise InvalidInput("url", "is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("url", f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("url", "must start with http:// or https://")
    if not parts.hostname:
        raise InvalidInput("url", "has no host")
    if parts.username is not None or parts.password is not None:
        # the URL is shown by the API and the CLI; a credential in it would leak there
        raise InvalidInput("url", "must not carry a user or password: receivers check the signature")
    if parts.fragment:
        raise InvalidInput("url", "must not have a #fragment")
    if port == 0:
        raise InvalidInput("url", "port 0 is not a port")
    return url


def check_secret(secret: str) -> str:
    if not SECRET_MIN <= len(secret) <= SECRET_MAX:
        raise InvalidInput("secret", f"must be {SECRET_MIN} to {SECRET_MAX} characters long")
    return secret


def encrypt_secret(settings: Settings, secret: str) -> str:
    return encrypt_password(settings, check_secret(secret)).decode("ascii")


def decrypt_secret(settings: Settings, name: str, secret_enc: str) -> bytes:
    try:
        return decrypt_password(settings, secret_enc.encode("ascii")).encode()
    except ConfigError as exc:
        raise ConfigError(
            f"the secret of event sink '{name}' cannot be decrypted ({exc.message}); set it again with "
            f"`kiln webhook set {name} --secret-stdin`",
            field="credential_key",
        ) from None


def latest_event_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Event.id))) or 0)


def get_sink(session: Session, key: str | int, *, for_update: bool = False) -> EventSink:
    query = select(EventSink)
    if isinstance(key, int) or key.isdigit():
        query = query.where(EventSink.id == int(key))
    else:
        query = query.where(EventSink.name == key)
    if for_update:
        query = query.with_for_update()
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"event sink '{key}' not found", field="id")
    return found


def list_sinks(session: Session) -> list[EventSink]:
    return list(session.scalars(select(EventSink).order_by(EventSink.id)))


def create_sink(
    session: Session,
    settings: Settings,
    *,
    name: str,
    url: str,
    secret: str,
    filter: str = "*",
    enabled: bool = True,
    actor: str = "system",
) -> EventSink:
    """A new sink receives the events recorded after it was created, not the history before."""
    if not _NAME.match(name):
        raise InvalidInput(
            "name", "letters, digits, '.', '_', '-'; at most 64; starting with a letter or digit"
        )
    check_url(url)
    parse_filter(filter)
    if session.scalar(select(EventSink.id).where(EventSink.name == name)) is not None:
        raise Conflict(f"event sink '{name}' exists already", field="name")
    sink = EventSink(
        name=name,
        url=url,
        filter=filter,
        secret_enc=encrypt_secret(settings, secret),
        enabled=enabled,
        last_event_id=0,
    )
    session.add(sink)
    session.flush()
    created = record(
        session,
        "webhook.create",
        subject_type="event_sink",
        subject_id=sink.id,
        actor=actor,
        message=f"event sink {name} → {url} ({filter})",
        data={"name": name, "url": url, "filter": filter, "enabled": enabled},
    )
    session.flush()
    sink.last_event_id = created.id  # its own creation is the last event it does not receive
    return sink


def update_sink(
    session: Session,
    settings: Settings,
    sink: EventSink,
    *,
    url: str | None = None,
    filter: str | None = None,
    secret: str | None = None,
    enabled: bool | None = None,
    expected_version: int | None = None,
    actor: str = "system",
) -> EventSink:
    """Change what was given. Re-enabling a sink skips the events recorded while it was off."""
    if url is not None:
        check_url(url)
    if filter is not None:
        parse_filter(filter)
    secret_enc = encrypt_secret(settings, secret) if secret is not None else None
    check_and_bump(sink, expected_version, f"event sink {sink.name}")
    changed: list[str] = []
    if url is not None and url != sink.url:
        sink.url = url
        changed.append("url")
    if filter is not None and filter != sink.filter:
        sink.filter = filter
        changed.append("filter")
    if secret_enc is not None:
        sink.secret_enc = secret_enc
        changed.append("secret")
    if enabled is not None and enabled != sink.enabled:
        if enabled:
            sink.last_event_id = latest_event_id(session)
        sink.enabled = enabled
        changed.append("enabled")
    record(
        session,
        "webhook.update",
        subject_type="event_sink",
        subject_id=sink.id,
        actor=actor,
        message=f"event sink {sink.name}: {', '.join(changed) or 'nothing'} changed",
        data={"changed": changed, "url": sink.url, "filter": sink.filter, "enabled": sink.enabled},
    )
    return sink


def delete_sink(session: Session, sink: EventSink, *, actor: str = "system") -> None:
    """The sink and its delivery records go; a POST already under way finishes and is not recorded."""
    session.execute(delete(Delivery).where(Delivery.sink_id == sink.id))
    session.delete(sink)
    record(
        session,
        "webhook.delete",
        subject_type="event_sink",
        subject_id=sink.id,
        actor=actor,
        message=f"event sink {sink.name} deleted",
        data={"name": sink.name, "url": sink.url},
    )


def delivery_counts(session: Session, sink_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
    """{sink id: {status: deliveries}}."""
    query = select(Delivery.sink_id, Delivery.status, func.count()).group_by(
        Delivery.sink_id, Delivery.status
    )
    if sink_ids is not None:
        query = query.where(Delivery.sink_id.in_(list(sink_ids)))
    counts: dict[int, dict[str, int]] = {}
    for sink_id, status, n in session.execute(query):
        counts.setdefault(sink_id, {})[status] = int(n)
    return counts


def deliveries_query(sink_id: int | None = None, status: str | None = None) -> Select[Any]:
    query = select(Delivery)
    if sink_id is not None:
        query = query.where(Delivery.sink_id == sink_id)
    if status is not None:
        if status not in DELIVERY_STATES:
            raise InvalidInput("status", f"one of {', '.join(DELIVERY_STATES)}")
        query = query.where(Delivery.status == status)
    return query


def event_actions(session: Session, event_ids: Sequence[int]) -> dict[int, str]:
    if not event_ids:
        return {}
    query = select(Event.id, Event.action).where(Event.id.in_(list(event_ids)))
    return {event_id: action for event_id, action in session.execute(query)}


def redeliver(session: Session, delivery_id: int, *, actor: str = "system") -> Delivery:
    """Send a delivery again now, with a fresh set of attempts (after the receiver was fixed)."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} not found", field="id")
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    record(
        session,
        "webhook.redeliver",
        subject_type="event_sink",
        subject_id=delivery.sink_id,
        actor=actor,
        message=f"delivery {delivery.id} of event {delivery.event_id} queued again",
        data={"delivery": delivery.id, "event": delivery.event_id},
    )
    return delivery


def delivery_row(delivery: Delivery, action: str | None = None) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "sink_id": delivery.sink_id,
        "event_id": delivery.event_id,
        "action": action,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "last_attempt_at": delivery.last_attempt_at,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
    }
