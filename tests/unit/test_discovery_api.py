"""POST /api/v2/discovery and the agent's work loop, against the real app and database."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from appliance.annealer import barclamps
from appliance.models import BootToken, Event, Node, NodeMac, NodeRole, Role
from tests.unit.api_support import Api, api_fixture, sqlite_api_fixture  # noqa: F401  (fixtures)
from tests.unit.discovery_support import boot_token, inventory, register


def _count(api: Api, model: type) -> int:
    with api.db.read_session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_discovery_creates_node_with_hardware_joins_system_and_binds_discovery_roles(api: Api) -> None:
    with api.db.session() as s:
        barclamps.load_core(s)
    inv = inventory(("52:54:00:00:00:01", "52:54:00:00:00:02"), memory_mb=2048)
    r = register(api, inv)
    assert r.status_code == 201, r.json
    body = r.json
    assert body["created"] is True and body["token"] and body["name"] == "d525400000001"
    with api.db.read_session() as s:
        node = s.get(Node, body["node_id"])
        assert node is not None
        assert [m.mac for m in node.macs] == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
        assert [m.primary for m in node.macs] == [True, False]
        assert node.inventory["memory"]["total_mb"] == 2048
        assert node.inventory["disks"][0]["serial"] == "DISK1"
        assert node.system_uuid == "6a1f3c2e-1111-4a4b-9c9d-000000000001"
        assert node.state == "discovered" and node.bootenv == "local"
        assert node.deployment_id is not None
        assert node.discovery["boot_mac"] == "52:54:00:00:00:01"
        roles = set(
            s.scalars(
                select(Role.name)
                .join(NodeRole, NodeRole.role_id == Role.id)
                .where(NodeRole.node_id == node.id)
            )
        )
        assert "kiln-discovered" in roles
    assert [e.subject_id for e in api.events("node.discovered")] == [body["node_id"]]


def test_discovery_token_is_single_use(sqlite_api: Api) -> None:
    inv = inventory()
    token = boot_token(sqlite_api, inv["boot_mac"])
    first = sqlite_api.client.post("/api/v2/discovery", json={"token": token, **inv})
    assert first.status_code == 201
    again = sqlite_api.client.post("/api/v2/discovery", json={"token": token, **inv})
    assert again.status_code == 401 and again.json["field"] == "token"


def test_expired_discovery_token_is_refused_and_writes_nothing(sqlite_api: Api) -> None:
    inv = inventory()
    token = boot_token(sqlite_api, inv["boot_mac"])
    with sqlite_api.db.session() as s:
        s.execute(update(BootToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    r = sqlite_api.client.post("/api/v2/discovery", json={"token": token, **inv})
    assert r.status_code == 401
    assert _count(sqlite_api, Node) == 0


def test_rediscovery_with_a_new_nic_updates_the_node_found_by_dmi_uuid(api: Api) -> None:
    first = register(api, inventory(("52:54:00:00:00:01",)))
    # same board, its NIC swapped for another: the UUID still says which machine it is
    again = register(api, inventory(("52:54:00:00:00:09",)))
    assert again.status_code == 201, again.json
    assert again.json["node_id"] == first.json["node_id"] and again.json["created"] is False
    assert _count(api, Node) == 1
    with api.db.read_session() as s:
        assert set(s.scalars(select(NodeMac.mac))) == {"52:54:00:00:00:01", "52:54:00:00:00:09"}


def test_rediscovery_without_uuid_matches_any_known_mac(sqlite_api: Api) -> None:
    first = register(sqlite_api, inventory(("52:54:00:00:00:01", "52:54:00:00:00:02"), uuid=None))
    # the operator sends it through discovery again; it boots from its second NIC, a third one added
    assert sqlite_api.patch(f"/nodes/{first.json['node_id']}", {"bootenv": "discovery"}).status_code == 200
    again = register(sqlite_api, inventory(("52:54:00:00:00:02", "52:54:00:00:00:03"), uuid=None))
    assert again.json["node_id"] == first.json["node_id"]
    assert _count(sqlite_api, Node) == 1
    assert _count(sqlite_api, NodeMac) == 3


def test_placeholder_dmi_uuids_do_not_merge_different_machines(sqlite_api: Api) -> None:
    bogus = "03000200-0400-0500-0006-000700080009"
    a = register(sqlite_api, inventory(("52:54:00:00:00:01",), uuid=bogus))
    b = register(sqlite_api, inventory(("52:54:00:00:00:02",), uuid=bogus))
    assert a.json["node_id"] != b.json["node_id"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda inv: inv["nics"][0].update(mac="not-a-mac"), "nics.0.mac"),
        (lambda inv: inv["memory"].update(total_mb="lots"), "memory.total_mb"),
        (lambda inv: inv["disks"][0].update(size_bytes=-5), "disks.0.size_bytes"),
        (lambda inv: inv["system"].update(serial="x" * 10_000), "system.serial"),
        (lambda inv: inv.update(disks=[inv["disks"][0]] * 300), "disks"),
        (lambda inv: inv.update(nics=[]), "nics"),
        (lambda inv: inv.pop("nics"), "nics"),
    ],
)
def test_malformed_or_oversized_inventory_is_refused_naming_the_field_and_writes_nothing(
    sqlite_api: Api, mutate: object, field: str
) -> None:
    inv = inventory()
    token = boot_token(sqlite_api, inv["boot_mac"])
    mutate(inv)  # type: ignore[operator]
    events_before = _count(sqlite_api, Event)
    r = sqlite_api.client.post("/api/v2/discovery", json={"token": token, **inv})
    assert r.status_code == 400, r.json
    assert r.json["field"] == field
    assert _count(sqlite_api, Node) == 0 and _count(sqlite_api, NodeMac) == 0
    assert _count(sqlite_api, Event) == events_before
    # the token was not spent by the refused report
    good = sqlite_api.client.post("/api/v2/discovery", json={"token": token, **inventory()})
    assert good.status_code == 201


def test_body_over_the_size_limit_is_a_400_on_body(sqlite_api: Api) -> None:
    r = sqlite_api.client.post(
        "/api/v2/discovery", data=b"{" + b" " * 300_000 + b"}", content_type="application/json"
    )
    assert r.status_code == 400 and r.json["field"] == "body"


def test_agent_polls_runs_a_script_and_reports_its_result(api: Api) -> None:
    reg = register(api, inventory()).json
    agent = {"Authorization": f"Bearer {reg['token']}"}
    idle = api.client.get("/api/v2/agent/work", headers=agent)
    assert idle.status_code == 200 and idle.json["kind"] == "none" and idle.json["id"] is None

    queued = api.post(
        f"/nodes/{reg['node_id']}/agent-tasks", {"kind": "script", "payload": {"script": "echo hi"}}
    )
    assert queued.status_code == 201, queued.json
    work = api.client.get("/api/v2/agent/work", headers=agent).json
    assert work["kind"] == "script" and work["id"] == queued.json["id"]
    text = api.client.get(f"/api/v2/agent/tasks/{work['id']}/script", headers=agent)
    assert text.get_data(as_text=True) == "echo hi"
    done = api.client.post(
        f"/api/v2/agent/tasks/{work['id']}/result",
        json={"status": "ok", "exit_code": 0, "output": "hi\n"},
        headers=agent,
    )
    assert done.status_code == 200 and done.json["state"] == "ok"
    twice = api.client.post(
        f"/api/v2/agent/tasks/{work['id']}/result", json={"status": "ok", "exit_code": 0}, headers=agent
    )
    assert twice.status_code == 409
    listed = api.get(f"/nodes/{reg['node_id']}/agent-tasks").json["items"]
    assert [(t["state"], t["output"]) for t in listed] == [("ok", "hi\n")]
    with api.db.read_session() as s:
        node = s.get(Node, reg["node_id"])
        assert node is not None and node.last_agent_contact is not None


def test_agent_endpoints_refuse_missing_or_foreign_tokens(sqlite_api: Api) -> None:
    a = register(sqlite_api, inventory(("52:54:00:00:00:01",), uuid=None)).json
    b = register(sqlite_api, inventory(("52:54:00:00:00:02",), uuid=None)).json
    assert sqlite_api.client.get("/api/v2/agent/work").status_code == 401
    assert (
        sqlite_api.client.get("/api/v2/agent/work", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    # a user's API token is not an agent token
    user = {"Authorization": f"Bearer {sqlite_api.tokens['admin']}"}
    assert sqlite_api.client.get("/api/v2/agent/work", headers=user).status_code == 401
    task = sqlite_api.post(f"/nodes/{a['node_id']}/agent-tasks", {"kind": "reboot"}).json
    foreign = sqlite_api.client.post(
        f"/api/v2/agent/tasks/{task['id']}/result",
        json={"status": "ok"},
        headers={"Authorization": f"Bearer {b['token']}"},
    )
    assert foreign.status_code == 404


def test_queueing_agent_tasks_needs_the_operator_role_and_a_valid_payload(sqlite_api: Api) -> None:
    node_id = register(sqlite_api, inventory()).json["node_id"]
    assert (
        sqlite_api.post(f"/nodes/{node_id}/agent-tasks", {"kind": "reboot"}, role="readonly").status_code
        == 403
    )
    bad = sqlite_api.post(f"/nodes/{node_id}/agent-tasks", {"kind": "script", "payload": {}})
    assert bad.status_code == 400 and bad.json["field"] == "payload.script"
    assert sqlite_api.post(f"/nodes/{node_id}/agent-tasks", {"kind": "format-disk"}).status_code == 400
