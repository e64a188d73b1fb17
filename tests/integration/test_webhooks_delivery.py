"""Webhook deliveries against real HTTP receivers on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from appliance import events
from appliance.annealer import deployments
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Delivery, Event, NodeRole
from appliance.webhooks import sinks
from appliance.webhooks.post import SIGNATURE_HEADER, verify
from appliance.webhooks.worker import WebhookWorker, serve
from tests.integration.webhook_receivers import HangingReceiver, Receiver, self_signed_tls
from tests.unit.annealer_world import anneal, load, make_nodes

SECRET = "s3cret-for-the-webhook-tests"


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhooks_backoff_seconds": 0.05,
            "webhooks_timeout": 2.0,
            "webhooks_max_attempts": 5,
        }
    )


@pytest.fixture
def flaky() -> Iterator[Receiver]:
    started = Receiver(fail_first=2).start()
    yield started
    started.stop()


@pytest.fixture
def hanging() -> Iterator[HangingReceiver]:
    started = HangingReceiver()
    yield started
    started.stop()


def add_sink(db: Database, settings: Settings, url: str, filter: str, name: str = "hook") -> int:
    with db.session() as s:
        return sinks.create_sink(s, settings, name=name, url=url, secret=SECRET, filter=filter).id


def record_event(db: Database, action: str, **data: object) -> int:
    with db.session() as s:
        event = events.record(s, action, subject_type="node", subject_id=7, message=action, data=dict(data))
        s.flush()
        return event.id


def deliveries(db: Database) -> list[Delivery]:
    with db.read_session() as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def attempts_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("kiln_webhook_attempts_total", {"outcome": outcome}) or 0.0


def step_until(worker: WebhookWorker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        if not worker.step():
            worker.wakeup.wait(0.02)


def test_receiver_failing_twice_gets_the_event_on_the_third_attempt_signed(
    db: Database, fast: Settings, flaky: Receiver
) -> None:
    add_sink(db, fast, flaky.url, "node.create, noderole.*")
    event_id = record_event(db, "node.create", name="n1.test", password="hunter2")
    record_event(db, "user.login")  # not matched by the filter
    before = {o: attempts_counted(o) for o in ("retry", "delivered")}
    worker = WebhookWorker(db, fast)
    try:
        step_until(worker, lambda: any(d.status == "delivered" for d in deliveries(db)))
    finally:
        worker.close()

    assert len(flaky.requests) == 3
    third = flaky.requests[-1]
    assert third.path == "/hook?x=1"
    assert verify(SECRET.encode(), third.body, third.headers[SIGNATURE_HEADER])
    assert not verify(b"another secret entirely", third.body, third.headers[SIGNATURE_HEADER])
    assert third.headers["X-Kiln-Event-Id"] == str(event_id)
    assert third.headers["X-Kiln-Event"] == "node.create"
    assert abs(int(third.headers["X-Kiln-Timestamp"]) - time.time()) < 60
    assert [r.headers["X-Kiln-Attempt"] for r in flaky.requests] == ["1", "2", "3"]
    assert {r.body for r in flaky.requests} == {third.body}  # the same bytes on every attempt
    body = json.loads(third.body)
    assert body["id"] == event_id and body["action"] == "node.create"
    assert body["data"] == {"name": "n1.test", "password": "***"}  # events are scrubbed before this

    (delivery,) = deliveries(db)
    assert (delivery.event_id, delivery.status, delivery.attempts) == (event_id, "delivered", 3)
    assert attempts_counted("retry") - before["retry"] == 2
    assert attempts_counted("delivered") - before["delivered"] == 1
    assert delivery.last_status_code == 200 and delivery.last_error is None


def test_receiver_failing_every_time_ends_failed_after_max_attempts(
    db: Database, fast: Settings, flaky: Receiver
) -> None:
    flaky.fail_first = 1000
    add_sink(db, fast.model_copy(update={"webhooks_max_attempts": 3}), flaky.url, "*")
    record_event(db, "node.create")
    worker = WebhookWorker(db, fast.model_copy(update={"webhooks_max_attempts": 3}))
    try:
        step_until(worker, lambda: any(d.status == "failed" for d in deliveries(db)))
    finally:
        worker.close()
    (delivery,) = deliveries(db)
    assert delivery.attempts == 3 and delivery.last_status_code == 500
    assert delivery.last_error == "HTTP 500 Internal Server Error"
    assert len(flaky.requests) == 3


def test_a_hanging_receiver_does_not_hold_up_the_annealer(
    db: Database, fast: Settings, hanging: HangingReceiver, flaky: Receiver, tmp_path: Path
) -> None:
    settings = fast.model_copy(
        update={"webhooks_timeout": 0.3, "webhooks_max_attempts": 2, "webhooks_per_sink": 2}
    )
    flaky.fail_first = 0
    load(db, tmp_path, "roles:\n  - {name: a}\n  - {name: b, requires: [a]}\n  - {name: c, requires: [b]}\n")
    nodes = make_nodes(db, 10)
    hangs = add_sink(db, settings, hanging.url, "noderole.*", name="hangs")
    healthy_id = add_sink(db, settings, flaky.url, "deployment.*", name="healthy")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, db, stop))
    thread.start()
    try:
        with db.session() as s:
            deployment = deployments.create(s, "web")
            deployments.add_nodes(s, deployment, nodes, ["c"])
            deployments.commit(s, deployment)
        anneal(db, timeout=60)
        with db.read_session() as s:
            query = select(NodeRole.state, func.count()).group_by(NodeRole.state)
            states = {state: n for state, n in s.execute(query)}
            wanted = s.scalar(select(func.count()).where(Event.action.like("noderole.%")))
        assert states == {"active": 30}

        deadline = time.monotonic() + 20
        while True:  # the worker catches up with the events; the hanging sink's stay undelivered
            hung = [d for d in deliveries(db) if d.sink_id == hangs]
            tried = [d for d in hung if d.attempts]
            if len(hung) == wanted and tried and flaky.requests:
                break
            assert time.monotonic() < deadline, (len(hung), wanted, len(tried), len(flaky.requests))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the worker did not stop within 10 s"
    assert hanging.accepted, "the hanging receiver was never contacted"
    hung = [d for d in deliveries(db) if d.sink_id == hangs]
    assert {d.status for d in hung} <= {"pending", "failed"}
    assert all(d.last_error == "no answer within 0.3 s" for d in hung if d.attempts)
    # the healthy sink was served meanwhile: a hanging receiver holds only its own slots
    healthy = [d for d in deliveries(db) if d.sink_id == healthy_id]
    assert healthy and {d.status for d in healthy} == {"delivered"}


def test_two_workers_deliver_each_event_once(db: Database, fast: Settings, flaky: Receiver) -> None:
    flaky.fail_first = 0
    add_sink(db, fast, flaky.url, "*")
    ids = [record_event(db, "node.update", n=i) for i in range(30)]
    workers = [WebhookWorker(db, fast.model_copy(update={"webhooks_per_sink": 4})) for _ in range(2)]
    errors: list[BaseException] = []

    def run(worker: WebhookWorker) -> None:
        try:
            step_until(worker, lambda: sum(d.status == "delivered" for d in deliveries(db)) == 30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            worker.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(int(r.headers["X-Kiln-Event-Id"]) for r in flaky.requests) == ids
    assert all(d.attempts == 1 for d in deliveries(db))


def test_a_receiver_that_does_not_answer_costs_one_timeout_per_slot_not_one_per_event(
    db: Database, fast: Settings, hanging: HangingReceiver
) -> None:
    settings = fast.model_copy(
        update={"webhooks_timeout": 0.3, "webhooks_per_sink": 1, "webhooks_backoff_seconds": 60.0}
    )
    add_sink(db, settings, hanging.url, "*")
    for i in range(10):
        record_event(db, "node.update", n=i)
    worker = WebhookWorker(db, settings)
    try:
        step_until(worker, lambda: any(d.last_error for d in deliveries(db)))
        step_until(worker, lambda: not worker.inflight)
    finally:
        worker.close()
    tried = [d for d in deliveries(db) if d.attempts]
    untried = [d for d in deliveries(db) if not d.attempts]
    assert len(tried) == 1 and tried[0].last_error == "no answer within 0.3 s"
    assert len(untried) == 9 and all(d.status == "pending" and d.last_error is None for d in untried)
    # handed back to wait out the same backoff as the one that was tried
    assert all(abs((d.next_attempt_at - tried[0].next_attempt_at).total_seconds()) < 2 for d in untried)
    assert len(hanging.accepted) == 1  # the other nine were never sent into the silence


def test_https_receivers_are_verified_against_the_trusted_cas(
    db: Database, fast: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, ca_file = self_signed_tls(tmp_path)
    tls = Receiver(tls=context).start()
    try:
        settings = fast.model_copy(update={"webhooks_max_attempts": 1})
        add_sink(db, settings, tls.url, "*")
        record_event(db, "node.create")
        worker = WebhookWorker(db, settings)
        try:
            step_until(worker, lambda: any(d.status == "failed" for d in deliveries(db)))
        finally:
            worker.close()
        (refused,) = deliveries(db)
        assert refused.last_error is not None and refused.last_error.startswith("TLS: ")
        assert "CERTIFICATE_VERIFY_FAILED" in refused.last_error and tls.requests == []

        # the same receiver once its CA is trusted (SSL_CERT_FILE, as an operator sets it for the unit)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        record_event(db, "node.update")
        worker = WebhookWorker(db, settings)
        try:
            step_until(worker, lambda: any(d.status == "delivered" for d in deliveries(db)))
        finally:
            worker.close()
        assert [r.headers["X-Kiln-Event"] for r in tls.requests] == ["node.update"]
    finally:
        tls.stop()


def test_a_sink_that_does_not_answer_is_held_back_then_catches_up_when_it_answers(
    db: Database, fast: Settings, hanging: HangingReceiver
) -> None:
    settings = fast.model_copy(
        update={"webhooks_timeout": 0.3, "webhooks_per_sink": 1, "webhooks_backoff_seconds": 1.0}
    )
    sink_id = add_sink(db, settings, hanging.url, "node.*")
    first = [record_event(db, "node.update", n=i) for i in range(3)]
    worker = WebhookWorker(db, settings)
    good = Receiver().start()
    try:
        step_until(worker, lambda: sink_id in worker.held)
        assert REGISTRY.get_sample_value("kiln_webhook_sinks_held") == 1.0
        # while held, new events make no delivery rows: nothing for the annealer's write lock
        later = [record_event(db, "node.update", n=i) for i in range(3, 23)]
        rows_while_held = len(deliveries(db))
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            worker.step()
            worker.wakeup.wait(0.02)
        assert len(deliveries(db)) == rows_while_held == 3
        assert len(hanging.accepted) == 1  # one chunk went into the silence, nothing since
        # the receiver is back (at a new address): the hold ends, the backlog is fanned out and sent
        with db.session() as s:
            sinks.update_sink(s, settings, sinks.get_sink(s, sink_id), url=good.url)
        wanted = {str(i) for i in first + later}
        step_until(
            worker,
            lambda: wanted <= {r.headers["X-Kiln-Event-Id"] for r in good.requests},
            timeout=30,
        )
        step_until(worker, lambda: not worker.inflight)
    finally:
        worker.close()
        good.stop()
    assert sink_id not in worker.held
    assert REGISTRY.get_sample_value("kiln_webhook_sinks_held") == 0.0
    assert all(d.status == "delivered" for d in deliveries(db) if d.event_id in set(first + later))
