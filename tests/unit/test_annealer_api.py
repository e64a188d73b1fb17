"""The annealer's REST API: deployments, node-roles (show, retry, replay, user data), the graph."""

from __future__ import annotations

from pathlib import Path

from appliance.annealer.runner import Annealer
from tests.unit.annealer_world import load, make_nodes
from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixture)

ROLES = """\
roles:
  - name: base
    inputs: {motd: {default: hi}}
    outputs: {motd: {from: motd}}
  - {name: app, requires: [base]}
  - {name: bad, jig: test, jig_data: {fail: nope}}
"""


def run_annealer(api: Api) -> None:
    annealer = Annealer(api.db, lease_seconds=30)
    try:
        annealer.run_until_idle(timeout=30)
    finally:
        annealer.close()


def test_deployment_lifecycle_graph_and_node_role_details(api: Api, tmp_path: Path) -> None:
    load(api.db, tmp_path, ROLES)
    nodes = make_nodes(api.db, 2)
    created = api.post("/deployments", {"name": "web"}, role="operator")
    assert created.status_code == 201, created.json
    dep = created.json["id"]
    assert api.post("/deployments", {"name": "web"}).status_code == 409
    assert (
        api.post(f"/deployments/{dep}/nodes", {"nodes": nodes, "roles": ["app"]}, role="readonly").status_code
        == 403
    )
    bound = api.post(f"/deployments/{dep}/nodes", {"nodes": nodes, "roles": ["app"]})
    assert bound.status_code == 201 and len(bound.json["node_roles"]) == 4
    unknown = api.post(f"/deployments/{dep}/nodes", {"nodes": nodes, "roles": ["nope"]})
    assert unknown.status_code == 400 and unknown.json["field"] == "role"
    assert api.get(f"/deployments/{dep}").json["counts"] == {"proposed": 4}

    committed = api.post(f"/deployments/{dep}/commit", {})
    assert committed.status_code == 200 and committed.json["state"] == "committed"
    assert committed.json["counts"] == {"todo": 2, "blocked": 2}
    run_annealer(api)

    graph = api.get(f"/deployments/{dep}/graph").json
    assert {n["name"] for n in graph["roles"]["nodes"]} == {"base", "app"}
    assert len(graph["roles"]["edges"]) == 1
    assert len(graph["node_roles"]["nodes"]) == 4 and len(graph["node_roles"]["edges"]) == 2
    assert api.get(f"/deployments/{dep}/graph?level=roles").json["node_roles"] is None

    listed = api.get(f"/node_roles?deployment_id={dep}&role=base&state=active").json["items"]
    assert len(listed) == 2
    detail = api.get(f"/node_roles/{listed[0]['id']}").json
    assert detail["state"] == "active" and detail["wall"] == {"motd": "hi"}
    assert detail["runs"][0]["inputs"] == {"motd": "hi"} and detail["runs"][0]["status"] == "ok"

    patched = api.patch(f"/node_roles/{listed[0]['id']}", {"user_data": {"motd": "hello"}})
    assert patched.status_code == 200 and patched.json["state"] == "todo"
    assert api.patch(f"/node_roles/{listed[0]['id']}", {"user_data": {"zzz": 1}}).status_code == 400
    run_annealer(api)
    assert api.get(f"/node_roles/{listed[0]['id']}").json["wall"] == {"motd": "hello"}

    replay = api.post(f"/node_roles/{listed[0]['id']}/replay", {})
    assert replay.status_code == 200 and replay.json["same_outputs"] is True

    proposed = api.post(f"/deployments/{dep}/propose", {})
    assert proposed.json["state"] == "proposed"
    assert api.post(f"/deployments/{dep}/commit", {}).json["state"] == "committed"
    recalled = api.post(f"/deployments/{dep}/recall", {})
    assert recalled.status_code == 200 and recalled.json["state"] == "proposed"
    assert api.delete(f"/deployments/{dep}/nodes/{nodes[1]}").status_code == 204
    assert sum(api.get(f"/deployments/{dep}").json["counts"].values()) == 2


def test_error_node_role_can_be_retried_and_only_errors_can(api: Api, tmp_path: Path) -> None:
    load(api.db, tmp_path, ROLES)
    nodes = make_nodes(api.db, 1)
    dep = api.post("/deployments", {"name": "d"}).json["id"]
    nr = api.post(f"/deployments/{dep}/nodes", {"nodes": nodes, "roles": ["bad"]}).json["node_roles"][0]
    assert api.put(f"/node_roles/{nr}/retry", {}).status_code == 409  # proposed, not error
    api.post(f"/deployments/{dep}/commit", {})
    run_annealer(api)
    shown = api.get(f"/node_roles/{nr}").json
    assert shown["state"] == "error" and "nope" in shown["runlog"]
    why = api.get(f"/node_roles/{nr}/why", role="readonly").json
    assert why["state"] == "error" and why["reasons"][0]["code"] == "error" and why["runnable"] is False
    retried = api.put(f"/node_roles/{nr}/retry", {}, role="operator")
    assert retried.status_code == 200 and retried.json == {"id": nr, "state": "todo"}
    names = {item["name"] for item in api.get("/roles?limit=100").json["items"]}
    assert {"base", "app", "bad", "kiln-discovered"} <= names
    assert api.get("/node_roles/999999").status_code == 404
