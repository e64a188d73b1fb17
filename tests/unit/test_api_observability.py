from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flask import Blueprint
from pydantic import SecretStr

import web.api
from appliance.config import Settings
from appliance.db import Database
from tests.unit.api_support import Api, sqlite_api_fixture  # noqa: F401  (fixtures)
from web.app import create_app
from web.observability import RequestContextFilter


def test_request_log_lines_carry_request_id_user_and_address(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    with caplog.at_level(logging.INFO, logger="web"):
        r = sqlite_api.get("/nodes", role="operator", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    lines = [rec for rec in caplog.records if rec.name == "web.observability"]
    assert lines, caplog.text
    line = lines[-1]
    assert (line.request_id, line.user, line.remote_addr) == ("abc-123", "operator", "127.0.0.1")  # type: ignore[attr-defined]
    assert "GET /api/v2/nodes 200" in line.getMessage()
    with caplog.at_level(logging.INFO, logger="web"):
        sqlite_api.client.get("/boot/nowhere?mac=52:54:00:00:00:01&token=sekrit-value")
    assert "sekrit-value" not in caplog.text and "mac=52:54:00:00:00:01&token=***" in caplog.text
    generated = sqlite_api.get("/nodes", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "X-Request-ID"
    ]
    assert generated != "bad id with spaces" and len(generated) == 16


def test_unexpected_error_is_json_500_without_traceback_and_counted(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> str:
        raise RuntimeError("secret internals")

    sqlite_api.app.add_url_rule("/api/v2/boom", view_func=boom)
    with caplog.at_level(logging.ERROR):
        r = sqlite_api.get("/boom")
    assert r.status_code == 500 and r.json["error"] == "internal error" and r.json["request_id"]
    assert "secret internals" not in r.data.decode() and "Traceback" not in r.data.decode()
    assert "secret internals" in caplog.text
    sqlite_api.get("/nodes/12345")
    metrics = sqlite_api.client.get("/metrics").data.decode()
    assert 'kiln_http_errors_total{endpoint="/api/v2/boom",kind="server"} 1.0' in metrics
    assert 'kiln_http_errors_total{endpoint="/api/v2/nodes/<int:node_id>",kind="client"} 1.0' in metrics
    assert 'kiln_http_request_duration_seconds_count{endpoint="/api/v2/boom"} 1.0' in metrics
    assert "kiln_requests_total" in metrics  # the process-wide families of appliance.metrics


def test_non_api_paths_keep_html_errors_and_root_redirects(sqlite_api: Api) -> None:
    client = sqlite_api.client
    assert client.get("/").status_code == 302 and client.get("/").headers["Location"].endswith("/admin/")
    assert not client.get("/nowhere").is_json
    assert client.get("/healthz").json == {"status": "ok"}


# an API module written without @endpoint, plugged in through web.api.MODULES by the test below
bp = Blueprint("plain_for_test", __name__)
bp.add_url_rule("/plain", view_func=lambda: {"ok": True}, methods=["GET", "POST"])


def test_routes_added_without_endpoint_still_require_login(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web.api, "MODULES", [*web.api.MODULES, __name__])
    app = create_app(sqlite_api.app.extensions["kiln"].settings, sqlite_api.db, TESTING=True)
    client = app.test_client()
    assert client.get("/api/v2/plain").status_code == 401
    readonly = {"Authorization": f"Bearer {sqlite_api.tokens['readonly']}"}
    operator = {"Authorization": f"Bearer {sqlite_api.tokens['operator']}"}
    assert client.get("/api/v2/plain", headers=readonly).json == {"ok": True}
    assert client.post("/api/v2/plain", headers=readonly).status_code == 403
    assert client.post("/api/v2/plain", headers=operator).status_code == 200
    doc = client.get("/api/v2/openapi.json").json
    assert doc["paths"]["/plain"]["get"]["x-kiln-undocumented"] is True


def test_unreachable_database_is_503_with_retry_after(sqlite_api: Api, tmp_path: Path) -> None:
    gone = Database(f"postgresql+psycopg://kiln@/kiln?host={tmp_path / 'no-such-socket-dir'}")
    app = create_app(sqlite_api.app.extensions["kiln"].settings, gone, TESTING=True)
    r = app.test_client().get(
        "/api/v2/nodes", headers={"Authorization": f"Bearer {sqlite_api.tokens['admin']}"}
    )
    assert r.status_code == 503 and r.headers["Retry-After"] == "5" and r.is_json
    assert "Traceback" not in r.data.decode()
    gone.dispose()


def test_metrics_token_when_set_is_required_as_a_bearer_token(
    settings: Settings, sqlite_db: Database
) -> None:
    open_app = create_app(settings, sqlite_db, TESTING=True).test_client()
    assert open_app.get("/metrics").status_code == 200
    locked = create_app(
        settings.model_copy(update={"web_metrics_token": SecretStr("scrape-me")}), sqlite_db, TESTING=True
    ).test_client()
    refused = locked.get("/metrics")
    assert refused.status_code == 401 and refused.json["field"] == "Authorization"
    assert locked.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = locked.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert scraped.status_code == 200 and b"kiln_http_requests_total" in scraped.data
