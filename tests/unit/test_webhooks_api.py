"""/api/v2/webhooks and `kiln webhook`: CRUD, roles, deliveries, and the secret never coming back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from appliance.cli import main
from appliance.config import load_settings
from appliance.db import Database
from appliance.models import Delivery, Event
from appliance.webhooks.worker import WebhookWorker
from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixture)

SECRET = "top-secret-signing-key-123"


def test_sink_crud_roles_and_the_secret_never_answered(api: Api) -> None:
    body = {"name": "ops", "url": "https://hooks.example.test/kiln", "filter": "noderole.*", "secret": SECRET}
    assert api.post("/webhooks", body, role="operator").status_code == 403
    created = api.post("/webhooks", body)
    assert created.status_code == 201, created.json
    sink = created.json
    assert sink["secret_set"] is True and sink["filter"] == "noderole.*" and sink["deliveries"] == {}
    assert api.post("/webhooks", body).status_code == 409

    bad = api.post("/webhooks", {**body, "name": "x", "url": "gopher://h/"})
    assert bad.status_code == 400 and bad.json["field"] == "url"
    bad = api.post("/webhooks", {**body, "name": "x", "filter": "a b"})
    assert bad.status_code == 400 and bad.json["field"] == "filter"
    bad = api.post("/webhooks", {**body, "name": "x", "secret": "short"})
    assert bad.status_code == 400 and bad.json["field"] == "secret"

    listed = api.get("/webhooks", role="readonly")
    assert [s["name"] for s in listed.json["items"]] == ["ops"]
    shown = api.get(f"/webhooks/{sink['id']}")
    etag = shown.headers["ETag"]
    changed = api.patch(
        f"/webhooks/{sink['id']}",
        {"filter": "node.*", "secret": "a-brand-new-secret-456"},
        headers={"If-Match": etag},
    )
    assert changed.status_code == 200, changed.json
    assert changed.json["filter"] == "node.*" and changed.json["version"] == sink["version"] + 1
    stale = api.patch(f"/webhooks/{sink['id']}", {"enabled": False}, headers={"If-Match": etag})
    assert stale.status_code == 409 and stale.json["field"] == "version"
    assert api.patch(f"/webhooks/{sink['id']}", {"enabled": False}, role="operator").status_code == 403

    answers = [created, listed, shown, changed, api.get("/openapi.json"), api.get("/events?limit=500")]
    for answer in answers:
        text = answer.get_data(as_text=True)
        assert SECRET not in text and "a-brand-new-secret-456" not in text
        assert "secret_enc" not in text

    assert api.delete(f"/webhooks/{sink['id']}", role="operator").status_code == 403
    assert api.delete(f"/webhooks/{sink['id']}").status_code == 204
    assert api.get(f"/webhooks/{sink['id']}").status_code == 404
    assert [e.action for e in api.events("webhook.delete")] == ["webhook.delete"]


def test_deliveries_are_listed_by_status_and_can_be_sent_again(api: Api) -> None:
    sink = api.post(
        "/webhooks", {"name": "n", "url": "http://127.0.0.1:9/", "filter": "node.*", "secret": SECRET}
    ).json
    assert api.post("/nodes", {"name": "n1"}).status_code == 201
    worker = WebhookWorker(api.db, api.app.extensions["kiln"].settings)
    worker.load_sinks()
    worker.fan_out()
    worker.close()
    with api.db.session() as s:
        delivery = s.scalars(select(Delivery)).one()
        delivery.status, delivery.attempts, delivery.last_error = "failed", 8, "connection refused"

    page = api.get(f"/webhooks/{sink['id']}/deliveries?status=failed", role="readonly").json
    (item,) = page["items"]
    assert item["action"] == "node.create" and item["attempts"] == 8
    assert item["last_error"] == "connection refused" and item["next_attempt_at"] is None
    assert api.get(f"/webhooks/{sink['id']}/deliveries?status=delivered").json["items"] == []
    assert api.get(f"/webhooks/{sink['id']}/deliveries?status=lost").status_code == 400
    assert api.get(f"/webhooks/{sink['id']}").json["deliveries"] == {"failed": 1}

    path = f"/webhooks/{sink['id']}/deliveries/{item['id']}/redeliver"
    assert api.post(path, {}, role="readonly").status_code == 403
    again = api.post(path, {}, role="operator")
    assert again.status_code == 200 and again.json["status"] == "pending" and again.json["attempts"] == 0
    assert api.post(f"/webhooks/{sink['id']}/deliveries/999/redeliver", {}).status_code == 404


def test_cli_add_list_set_deliveries_delete(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def kiln(*args: str, input: str | None = None, code: int = 0) -> str:
        result = runner.invoke(main, ["--database-url", db.url, *args], input=input, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    added = kiln("webhook", "add", "ops", "http://127.0.0.1:9/h", "--filter", "noderole.*,node.create")
    generated = added.split("secret (shown once): ")[1].strip()
    assert len(generated) >= 32
    piped = kiln("webhook", "add", "piped", "http://127.0.0.1:9/p", "--secret-stdin", input=SECRET + "\n")
    assert "secret" not in piped.split("for")[0] and SECRET not in piped
    assert "url: must start with http" in kiln("webhook", "add", "bad", "ftp://h/", code=1)

    rows = json.loads(kiln("webhook", "list", "--json"))
    assert [(r["name"], r["filter"], r["enabled"]) for r in rows] == [
        ("ops", "noderole.*,node.create", True),
        ("piped", "*", True),
    ]
    listing = kiln("webhook", "list")
    assert generated not in listing and SECRET not in listing
    assert "disabled" in kiln("webhook", "set", "ops", "--disable")

    with db.session() as s:
        s.add(Event(action="node.create", message="x", data={}))
    worker = WebhookWorker(db, load_settings(database_url=db.url))
    worker.load_sinks()
    worker.fan_out()
    worker.close()
    shown = json.loads(kiln("webhook", "deliveries", "piped", "--json"))
    # newest first; "*" includes the change made to the other sink
    assert [(d["action"], d["status"]) for d in shown] == [
        ("node.create", "pending"),
        ("webhook.update", "pending"),
    ]
    assert "node.create" in kiln("webhook", "deliveries", "piped", "--status", "pending")
    assert "queued again" in kiln("webhook", "redeliver", str(shown[0]["id"]))
    assert "deleted" in kiln("webhook", "delete", "piped")
    assert "event sink 'piped' not found" in kiln("webhook", "deliveries", "piped", code=1)
