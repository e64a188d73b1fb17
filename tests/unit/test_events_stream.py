"""GET /api/v2/events/stream against a real HTTP server on loopback, read with a real HTTP client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from appliance import events
from appliance.config import Settings
from appliance.db import Database
from tests.webadmin_world import PASSWORD, make_users
from web.app import create_app


@dataclass
class Server:
    url: str
    db: Database
    app: Flask

    def session(self, role: str = "readonly") -> requests.Session:
        http = requests.Session()
        answer = http.post(
            f"{self.url}/api/v2/login", json={"username": role, "password": PASSWORD}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        return http


@pytest.fixture
def server(settings: Settings, sqlite_db: Database) -> Iterator[Server]:
    make_users(sqlite_db)
    app = create_app(settings, sqlite_db, KILN_SSE_MAX_SECONDS=8, KILN_SSE_MAX_STREAMS=5)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.port}", sqlite_db, app)
    httpd.shutdown()
    httpd.server_close()


def record(db: Database, action: str, message: str = "") -> int:
    with db.session() as s:
        event = events.record(s, action, subject_type="node", subject_id=7, message=message)
        s.flush()
        return event.id


def read_events(answer: requests.Response, want: int, deadline: float) -> list[dict[str, object]]:
    """Parse SSE messages until `want` data messages arrived or the deadline passed."""
    found: list[dict[str, object]] = []
    current: dict[str, str] = {}
    for raw in answer.iter_lines(decode_unicode=True):
        if raw == "":
            if "data" in current:
                found.append({"id": int(current["id"]), **json.loads(current["data"])})
            current = {}
            if len(found) >= want or time.monotonic() > deadline:
                break
            continue
        if raw.startswith(":"):
            if time.monotonic() > deadline:
                break
            continue
        key, _, value = raw.partition(": ")
        current[key] = value
    return found


def test_a_new_event_reaches_an_open_stream_within_a_second(server: Server) -> None:
    http = server.session()
    with http.get(f"{server.url}/api/v2/events/stream", stream=True, timeout=10) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        written_at = time.monotonic()
        event_id = record(server.db, "node.discovered", "hello")
        got = read_events(answer, 1, time.monotonic() + 5)
        assert got and got[0]["id"] == event_id
        assert got[0]["action"] == "node.discovered" and got[0]["message"] == "hello"
        assert time.monotonic() - written_at < 2.0


def test_stream_resumes_after_last_event_id(server: Server) -> None:
    first = record(server.db, "node.create", "one")
    record(server.db, "node.update", "two")
    record(server.db, "node.update", "three")
    http = server.session()
    headers = {"Last-Event-ID": str(first)}
    with http.get(f"{server.url}/api/v2/events/stream", headers=headers, stream=True, timeout=10) as answer:
        got = read_events(answer, 2, time.monotonic() + 5)
    assert [e["message"] for e in got] == ["two", "three"]


def test_stream_filters_by_action_prefix(server: Server) -> None:
    start = record(server.db, "user.login", "before")
    record(server.db, "user.login", "noise")
    record(server.db, "noderole.state", "wanted")
    http = server.session()
    url = f"{server.url}/api/v2/events/stream?since={start}&action=noderole.,deployment.commit"
    with http.get(url, stream=True, timeout=10) as answer:
        got = read_events(answer, 1, time.monotonic() + 5)
    assert [e["message"] for e in got] == ["wanted"]


def test_stream_needs_a_login_or_token(server: Server) -> None:
    answer = requests.get(f"{server.url}/api/v2/events/stream", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]


def test_many_streams_share_one_poller(server: Server) -> None:
    http = server.session()
    answers = [http.get(f"{server.url}/api/v2/events/stream", stream=True, timeout=10) for _ in range(4)]
    try:
        event_id = record(server.db, "node.power_state", "off")
        for answer in answers:
            got = read_events(answer, 1, time.monotonic() + 5)
            assert got and got[0]["id"] == event_id
        source = server.app.extensions["kiln_event_notifier"]
        assert source.listeners == 4  # four streams, one poller thread between them
    finally:
        for answer in answers:
            answer.close()


def test_streams_past_the_cap_are_refused_with_retry_after_and_slots_come_back(server: Server) -> None:
    http = server.session()
    source_url = f"{server.url}/api/v2/events/stream"
    answers = [http.get(source_url, stream=True, timeout=10) for _ in range(5)]
    try:
        assert all(a.status_code == 200 for a in answers)
        refused = http.get(source_url, timeout=10)
        assert refused.status_code == 503
        assert "poll GET /api/v2/events" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        for answer in answers:
            answer.close()
    # a closed client is noticed at the next write (an event or the keepalive); then its slot is free
    source = server.app.extensions["kiln_event_notifier"]
    record(server.db, "node.update", "wake the streams")
    deadline = time.monotonic() + 10
    while source.streams > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.streams == 0
    with http.get(source_url, stream=True, timeout=10) as again:
        assert again.status_code == 200
