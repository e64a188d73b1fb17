from __future__ import annotations

import json

import pytest
from flask import request
from pydantic import ValidationError

from appliance.config import Settings
from appliance.db import Database
from tests.unit.api_support import PASSWORD, Api, api_fixture, sqlite_api_fixture  # noqa: F401  (fixtures)
from web.app import create_app
from web.throttle import LoginThrottle


def test_requests_without_valid_credentials_are_401(sqlite_api: Api) -> None:
    api = sqlite_api
    assert api.get("/nodes", role=None).status_code == 401
    assert api.get("/nodes", role=None, headers={"Authorization": "Bearer kiln_wrong"}).status_code == 401
    assert api.get("/nodes", role=None, headers={"Authorization": "Basic YWRtaW46eA=="}).status_code == 401
    assert api.post("/nodes", {"name": "n1"}, role=None).status_code == 401
    assert api.get("/openapi.json", role=None).status_code == 200


def test_roles_gate_reads_mutations_and_users(api: Api) -> None:
    assert api.get("/nodes", role="readonly").status_code == 200
    denied = api.post("/nodes", {"name": "n1"}, role="readonly")
    assert denied.status_code == 403 and "operator" in denied.json["error"]
    assert api.post("/nodes", {"name": "n1"}, role="operator").status_code == 201
    assert api.delete("/nodes/1", role="readonly").status_code == 403
    assert api.get("/users", role="operator").status_code == 403
    assert api.post("/users", {"username": "x", "password": PASSWORD}, role="operator").status_code == 403
    assert api.get("/users", role="admin").status_code == 200
    assert api.get("/nodes/1").status_code == 200


def test_no_answer_ever_contains_a_password_or_token_hash(api: Api) -> None:
    created = api.post("/users", {"username": "alice", "password": PASSWORD, "role": "operator"})
    assert created.status_code == 201
    token = api.post("/tokens", {"name": "ci"}, role="operator")
    assert token.status_code == 201 and token.json["token"].startswith("kiln_")
    bodies = [
        created.data,
        token.data,
        api.get("/users").data,
        api.get(f"/users/{created.json['id']}").data,
        api.patch(f"/users/{created.json['id']}", {"password": "another password"}).data,
        api.get("/tokens").data,
        api.get("/me", role="operator").data,
        api.get("/events?limit=500").data,
        api.get("/openapi.json").data,
        api.client.post("/api/v2/login", json={"username": "alice", "password": "another password"}).data,
    ]
    listed = api.get("/tokens", role="operator").json["items"]
    assert token.json["token"] not in json.dumps(listed)
    for body in bodies:
        text = body.decode()
        assert "$argon2" not in text and "password_hash" not in text and "token_hash" not in text
        assert PASSWORD not in text and "another password" not in text


def test_session_login_needs_csrf_token_for_changes(sqlite_api: Api) -> None:
    client = sqlite_api.client
    bad = client.post("/api/v2/login", json={"username": "operator", "password": "wrong password"})
    assert bad.status_code == 401
    login = client.post("/api/v2/login", json={"username": "operator", "password": PASSWORD})
    assert login.status_code == 200 and login.json["user"]["role"] == "operator"
    csrf = login.json["csrf_token"]
    assert client.get("/api/v2/nodes").status_code == 200
    assert client.get("/api/v2/csrf").json["csrf_token"] == csrf
    no_token = client.post("/api/v2/nodes", json={"name": "n1"})
    assert no_token.status_code == 403 and no_token.json["field"] == "X-CSRF-Token"
    wrong = client.post("/api/v2/nodes", json={"name": "n1"}, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    ok = client.post("/api/v2/nodes", json={"name": "n1"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    assert sqlite_api.events("node.create")[0].actor == "operator"
    assert client.post("/api/v2/logout").status_code == 204
    assert client.get("/api/v2/nodes").status_code == 401


def test_failed_logins_are_throttled_per_user_and_address(sqlite_api: Api) -> None:
    client = sqlite_api.client
    for _ in range(6):
        assert (
            client.post("/api/v2/login", json={"username": "admin", "password": "wrong password"}).status_code
            == 401
        )
    locked = client.post("/api/v2/login", json={"username": "admin", "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    # the lock is per user and per address: the same address is locked for other users too
    assert (
        client.post("/api/v2/login", json={"username": "operator", "password": PASSWORD}).status_code == 429
    )
    other_ip = client.post(
        "/api/v2/login",
        json={"username": "readonly", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.1.1.1"},
    )
    assert other_ip.status_code == 200


def test_disabled_user_and_revoked_token_lose_access(api: Api) -> None:
    user = api.post("/users", {"username": "bob", "password": PASSWORD, "role": "operator"}).json
    token = api.client.post(
        "/api/v2/tokens",
        json={"name": "t", "user_id": user["id"]},
        headers={"Authorization": f"Bearer {api.tokens['admin']}"},
    ).json
    bob = {"Authorization": f"Bearer {token['token']}"}
    assert api.client.get("/api/v2/nodes", headers=bob).status_code == 200
    assert api.patch(f"/users/{user['id']}", {"disabled": True}).status_code == 200
    assert api.client.get("/api/v2/nodes", headers=bob).status_code == 401
    assert api.patch(f"/users/{user['id']}", {"disabled": False}).status_code == 200
    assert api.client.get("/api/v2/nodes", headers=bob).status_code == 200
    assert api.delete(f"/tokens/{token['id']}", role="readonly").status_code == 403
    assert api.delete(f"/tokens/{token['id']}").status_code == 204
    assert api.client.get("/api/v2/nodes", headers=bob).status_code == 401


def test_user_management_keeps_an_admin_and_records_events(api: Api) -> None:
    admin_id = api.get("/me").json["id"]
    last = api.patch(f"/users/{admin_id}", {"role": "operator"})
    assert last.status_code == 409
    assert api.delete(f"/users/{admin_id}").status_code == 409
    dup = api.post("/users", {"username": "admin", "password": PASSWORD})
    assert dup.status_code == 409 and dup.json["field"] == "username"
    short = api.post("/users", {"username": "carol", "password": "short"})
    assert short.status_code == 400 and short.json["field"] == "password"
    carol = api.post("/users", {"username": "carol", "password": PASSWORD, "role": "admin"}).json
    assert api.patch(f"/users/{carol['id']}", {"role": "operator", "version": 1}).status_code == 200
    assert api.patch(f"/users/{carol['id']}", {"role": "admin", "version": 1}).status_code == 409
    assert api.delete(f"/users/{carol['id']}").status_code == 204
    assert [e.actor for e in api.events("user.update")] == ["admin"]
    assert api.events("user.delete")[0].message == "user carol"


def test_password_change_ends_existing_sessions(sqlite_api: Api) -> None:
    browser = sqlite_api.app.test_client()
    assert (
        browser.post("/api/v2/login", json={"username": "operator", "password": PASSWORD}).status_code == 200
    )
    assert browser.get("/api/v2/me").status_code == 200
    operator_id = browser.get("/api/v2/me").json["id"]
    assert sqlite_api.patch(f"/users/{operator_id}", {"password": "a new password"}).status_code == 200
    ended = browser.get("/api/v2/me")
    assert ended.status_code == 401
    assert (
        browser.post("/api/v2/login", json={"username": "operator", "password": "a new password"}).status_code
        == 200
    )
    assert browser.get("/api/v2/me").status_code == 200


def test_login_throttle_backs_off_exponentially_capped_and_resets_on_success() -> None:
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(5):
        throttle.failed("ip:a", "user:x")
    assert throttle.retry_after("ip:a", "user:x") == 0
    waits = []
    for _ in range(12):
        throttle.failed("ip:a", "user:x")
        waits.append(throttle.retry_after("user:x"))
    assert waits[:4] == [2, 4, 8, 16] and waits[-1] == 300
    assert throttle.retry_after("ip:b", "user:y") == 0
    now[0] += 301
    assert throttle.retry_after("ip:a") == 0
    throttle.succeeded("ip:a", "user:x")
    throttle.failed("ip:a")
    assert throttle.retry_after("ip:a") == 0


def test_token_last_use_is_recorded_at_most_once_a_minute(api: Api) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from appliance.models import Token

    issued = api.post("/tokens", {"name": "audit"}, role="operator").json
    assert issued["last_used_at"] is None
    bearer = {"Authorization": f"Bearer {issued['token']}"}

    def last_used() -> str | None:
        listed = api.get("/tokens", role="admin").json["items"]
        found: str | None = next(t for t in listed if t["id"] == issued["id"])["last_used_at"]
        return found

    assert api.client.get("/api/v2/nodes", headers=bearer).status_code == 200
    first = last_used()
    assert first is not None
    # within the minute: no write per request
    assert api.client.get("/api/v2/nodes", headers=bearer).status_code == 200
    assert last_used() == first
    # a minute later the next request moves it
    with api.db.session() as s:
        s.execute(
            update(Token)
            .where(Token.id == issued["id"])
            .values(last_used_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    assert api.client.get("/api/v2/nodes", headers=bearer).status_code == 200
    moved = last_used()
    assert moved is not None and moved > first


def test_client_address_comes_from_forwarded_headers_only_behind_trusted_proxies(
    settings: Settings, sqlite_db: Database
) -> None:
    seen: list[str | None] = []
    for hops in (0, 1):
        app = create_app(settings.model_copy(update={"web_trusted_proxies": hops}), sqlite_db, TESTING=True)

        @app.get("/whoami")
        def whoami() -> str:
            seen.append(request.remote_addr)
            return ""

        app.test_client().get(
            "/whoami", environ_base={"REMOTE_ADDR": "10.0.0.9"}, headers={"X-Forwarded-For": "203.0.113.7"}
        )
    # direct clients cannot claim another address; behind one proxy the client's own address is used
    assert seen == ["10.0.0.9", "203.0.113.7"]


def test_trusted_proxy_count_is_validated() -> None:
    with pytest.raises(ValidationError, match="web_trusted_proxies"):
        Settings(web_trusted_proxies=-1)
