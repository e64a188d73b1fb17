"""Event sinks: validation, secrets at rest, fan-out by cursor and filter, backoff, redelivery."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from appliance import events
from appliance.config import Settings
from appliance.db import Database, create_database
from appliance.errors import Conflict, InvalidInput
from appliance.models import Delivery, Event, EventSink
from appliance.webhooks import sinks
from appliance.webhooks.post import event_body, sign, verify
from appliance.webhooks.worker import WebhookWorker
from tests.pgserver import PostgresServer

SECRET = "a-secret-of-enough-length"
_counter = itertools.count()


def add(db: Database, settings: Settings, name: str = "hook", filter: str = "*", **kwargs: object) -> int:
    with db.session() as s:
        return sinks.create_sink(
            s, settings, name=name, url="http://127.0.0.1:9/hook", secret=SECRET, filter=filter, **kwargs
        ).id


def emit(db: Database, *actions: str) -> list[int]:
    with db.session() as s:
        made = [events.record(s, action) for action in actions]
        s.flush()
        return [e.id for e in made]


def pending(db: Database) -> list[tuple[int, int]]:
    """(sink id, event id) of every delivery."""
    with db.read_session() as s:
        return [(d.sink_id, d.event_id) for d in s.scalars(select(Delivery).order_by(Delivery.id))]


def test_filter_globs_match_actions() -> None:
    patterns = sinks.parse_filter("noderole.*, node.create")
    assert sinks.matches(patterns, "noderole.state")
    assert sinks.matches(patterns, "node.create")
    assert not sinks.matches(patterns, "node.delete")
    assert not sinks.matches(patterns, "NodeRole.state")  # actions are lower-case; globs are exact
    assert sinks.matches(sinks.parse_filter("*"), "anything.at.all")
    for bad in ("", " , ", "node create", "node.create; rm", "x" * 256):
        with pytest.raises(InvalidInput) as exc:
            sinks.parse_filter(bad)
        assert exc.value.field == "filter"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.test/x", "http:// or https://"),
        ("http:///nohost", "no host"),
        ("https://user:pw@example.test/", "user or password"),
        ("http://example.test/#frag", "fragment"),
        ("http://example.test:99999/", "not a URL"),
        ("http://" + "a" * 2050, "longer than 2048"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        sinks.check_url(url)
    assert exc.value.field == "url" and reason in exc.value.reason


def test_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = event_body({"id": 1, "action": "node.create", "data": {"b": 1, "a": 2}})
    assert body == b'{"action":"node.create","data":{"a":2,"b":1},"id":1}'
    expected = "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
    assert sign(b"k" * 16, body) == expected
    assert verify(b"k" * 16, body, expected)
    assert not verify(b"k" * 16, body + b" ", expected)


def test_secret_is_stored_encrypted_and_never_in_events(db: Database, settings: Settings) -> None:
    sink_id = add(db, settings)
    with db.read_session() as s:
        sink = s.get(EventSink, sink_id)
        assert sink is not None
        assert SECRET not in sink.secret_enc and sink.secret_enc.startswith("gAAAA")  # a Fernet token
        assert sinks.decrypt_secret(settings, sink.name, sink.secret_enc) == SECRET.encode()
        logged = s.scalars(select(Event).where(Event.action.like("webhook.%"))).all()
    assert [e.action for e in logged] == ["webhook.create"]
    assert all(SECRET not in str(e.data) + e.message for e in logged)
    with db.session() as s:
        sinks.update_sink(s, settings, sinks.get_sink(s, "hook"), secret="another-secret-0123456789")
    with db.read_session() as s:
        sink = sinks.get_sink(s, sink_id)
        assert sinks.decrypt_secret(settings, sink.name, sink.secret_enc) == b"another-secret-0123456789"
        update = s.scalars(select(Event).where(Event.action == "webhook.update")).one()
    assert update.data["changed"] == ["secret"] and "another-secret" not in str(update.data)


def test_create_refuses_duplicates_short_secrets_and_bad_names(db: Database, settings: Settings) -> None:
    add(db, settings)
    with pytest.raises(Conflict), db.session() as s:
        sinks.create_sink(s, settings, name="hook", url="http://x.test/", secret=SECRET)
    with pytest.raises(InvalidInput) as exc, db.session() as s:
        sinks.create_sink(s, settings, name="other", url="http://x.test/", secret="short")
    assert exc.value.field == "secret"
    with pytest.raises(InvalidInput) as exc, db.session() as s:
        sinks.create_sink(s, settings, name="-bad name", url="http://x.test/", secret=SECRET)
    assert exc.value.field == "name"
    with db.read_session() as s:
        assert [x.name for x in sinks.list_sinks(s)] == ["hook"]  # nothing half-written


def test_fan_out_follows_each_sinks_cursor_and_filter(db: Database, settings: Settings) -> None:
    emit(db, "node.create")  # before any sink: never delivered
    nodes = add(db, settings, "nodes", "node.*")
    everything = add(db, settings, "all", "*")
    first = emit(db, "node.create", "noderole.state", "node.delete")
    worker = WebhookWorker(db, settings)
    worker.load_sinks()
    assert worker.fan_out() > 0
    assert sorted(pending(db)) == sorted(
        [(nodes, first[0]), (nodes, first[2])] + [(everything, e) for e in first]
    )
    assert worker.fan_out() == 0  # the cursors moved: nothing twice
    with db.read_session() as s:
        assert {x.last_event_id for x in sinks.list_sinks(s)} == {first[-1]}

    # disabled: no deliveries meanwhile, and re-enabling skips what happened while it was off
    with db.session() as s:
        sinks.update_sink(s, settings, sinks.get_sink(s, "nodes"), enabled=False)
    during = emit(db, "node.update")
    worker.load_sinks()
    worker.fan_out()
    with db.session() as s:
        sinks.update_sink(s, settings, sinks.get_sink(s, "nodes"), enabled=True)
    after = emit(db, "node.update")
    worker.load_sinks()
    worker.fan_out()
    made = pending(db)
    assert (nodes, during[0]) not in made and (nodes, after[0]) in made
    assert (everything, during[0]) in made
    worker.close()


def test_backoff_doubles_up_to_the_cap(settings: Settings) -> None:
    tuned = settings.model_copy(update={"webhooks_backoff_seconds": 5.0, "webhooks_backoff_max": 60.0})
    worker = WebhookWorker.__new__(WebhookWorker)
    worker.backoff, worker.backoff_max = tuned.webhooks_backoff_seconds, tuned.webhooks_backoff_max
    assert [worker.backoff_for(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_redeliver_and_delete(db: Database, settings: Settings) -> None:
    sink_id = add(db, settings)
    (event_id,) = emit(db, "node.create")
    worker = WebhookWorker(db, settings)
    worker.load_sinks()
    worker.fan_out()
    worker.close()
    with db.session() as s:
        delivery = s.scalars(select(Delivery)).one()
        delivery.status, delivery.attempts, delivery.last_error = "failed", 8, "connection refused"
    with db.session() as s:
        again = sinks.redeliver(s, delivery.id, actor="tester")
        assert (again.status, again.attempts) == ("pending", 0)
    with db.session() as s:
        sinks.delete_sink(s, sinks.get_sink(s, sink_id))
    with db.read_session() as s:
        assert s.scalars(select(Delivery)).all() == []
        assert s.scalars(select(EventSink)).all() == []
        actions = [e.action for e in s.scalars(select(Event).where(Event.id > event_id))]
    assert actions == ["webhook.redeliver", "webhook.delete"]


@pytest.fixture
def pg_db(postgres: PostgresServer) -> Iterator[Database]:
    database = create_database(postgres.create_database(f"kiln_wh_{os.getpid()}_{next(_counter)}"))
    yield database
    database.dispose()


def test_postgres_fan_out_waits_for_an_event_committed_out_of_order(
    pg_db: Database, settings: Settings
) -> None:
    """Ids are handed out before commit: 11 can be visible while 10 is not yet. The fan-out must not
    move a cursor past 10 until it is committed (or the hole has stayed open too long)."""
    sink_id = add(pg_db, settings)
    slow = pg_db.sessionmaker()
    slow.begin()
    late = events.record(slow, "node.create", message="committed late")
    slow.flush()
    (early,) = emit(pg_db, "node.create")
    assert early > late.id
    worker = WebhookWorker(pg_db, settings, gap_seconds=60)
    worker.load_sinks()
    worker.fan_out()
    assert pending(pg_db) == []  # 'early' waits behind the open hole
    slow.commit()
    slow.close()
    worker.fan_out()
    assert pending(pg_db) == [(sink_id, late.id), (sink_id, early)]

    # a hole that never fills (a rolled-back transaction) holds delivery only for gap_seconds
    gone = pg_db.sessionmaker()
    gone.begin()
    events.record(gone, "node.create")
    gone.flush()
    gone.rollback()
    gone.close()
    (after,) = emit(pg_db, "node.delete")
    worker.fan_out()
    assert (sink_id, after) not in pending(pg_db)
    worker.fanout.gap_seconds = 0.0
    worker.fan_out()
    assert (sink_id, after) in pending(pg_db)
    worker.close()
