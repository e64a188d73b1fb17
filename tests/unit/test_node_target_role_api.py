"""target_role through the REST API: PATCH sets and clears it, an unknown role is a 400 naming the field,
the node's answer and the OpenAPI document show it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.annealer import deployments
from appliance.db import Database
from tests.unit.annealer_world import anneal, load, states
from tests.unit.api_support import Api, api_fixture, sqlite_api_fixture  # noqa: F401  (fixtures)
from web.api.openapi import build_document

ROLES = """\
roles:
  - name: tr-base
  - {name: tr-app, requires: [tr-base]}
"""


def _node(api: Api, tmp_path: Path, **fields: Any) -> dict[str, Any]:
    load(api.db, tmp_path, ROLES)
    answer = api.post("/nodes", {"name": "tr-n0", **fields})
    assert answer.status_code == 201, answer.json
    return dict(answer.json)


def test_patch_sets_then_null_clears_the_target_role_and_each_change_is_an_event(
    api: Api, tmp_path: Path
) -> None:
    node = _node(api, tmp_path)
    assert node["target_role"] is None
    path = f"/nodes/{node['id']}"

    set_ = api.patch(path, {"target_role": "tr-base", "version": node["version"]}, role="operator")
    assert set_.status_code == 200, set_.json
    assert set_.json["target_role"] == "tr-base" and set_.json["version"] == node["version"] + 1
    assert api.get(path, role="readonly").json["target_role"] == "tr-base"

    # a PATCH that does not name target_role leaves it alone
    other = api.patch(path, {"description": "rack 1"}, role="operator")
    assert other.json["target_role"] == "tr-base" and other.json["description"] == "rack 1"

    cleared = api.patch(path, {"target_role": None}, role="operator")
    assert cleared.status_code == 200 and cleared.json["target_role"] is None
    assert api.get(path).json["target_role"] is None
    events = api.events("node.target_role")
    assert [e.data for e in events] == [{"target_role": "tr-base"}, {"target_role": None}]
    assert {e.actor for e in events} == {"operator"}


def test_unknown_target_role_is_a_400_naming_the_field_and_changes_nothing(api: Api, tmp_path: Path) -> None:
    node = _node(api, tmp_path, target_role="tr-app")
    assert node["target_role"] == "tr-app"
    path = f"/nodes/{node['id']}"
    answer = api.patch(path, {"target_role": "no-such-role", "description": "lost"})
    assert answer.status_code == 400
    assert answer.json["field"] == "target_role" and "no role named 'no-such-role'" in answer.json["error"]
    after = api.get(path).json
    assert (
        after["target_role"] == "tr-app"
        and after["description"] == ""
        and after["version"] == node["version"]
    )
    wrong_type = api.patch(path, {"target_role": 7})
    assert wrong_type.status_code == 400 and wrong_type.json["field"] == "target_role"
    created = api.post("/nodes", {"name": "tr-n1", "target_role": "nope"})
    assert created.status_code == 400 and created.json["field"] == "target_role"
    assert api.get("/nodes?name=tr-n1").json["items"] == []


def test_target_role_change_checks_the_version_and_the_role_of_the_caller(api: Api, tmp_path: Path) -> None:
    node = _node(api, tmp_path)
    path = f"/nodes/{node['id']}"
    stale = api.patch(path, {"target_role": "tr-base", "version": node["version"] + 5})
    assert stale.status_code == 409 and stale.json["field"] == "version"
    assert api.patch(path, {"target_role": "tr-base"}, role="readonly").status_code == 403
    assert api.get(path).json["target_role"] is None
    # PUT replaces every field: a body without target_role clears it
    api.patch(path, {"target_role": "tr-base"})
    body = {k: api.get(path).json[k] for k in ("name", "description", "state", "bootenv", "hint")}
    replaced = api.put(path, body)
    assert replaced.status_code == 200 and replaced.json["target_role"] is None


def test_openapi_document_describes_target_role_on_node_input_and_output(sqlite_api: Api) -> None:
    schemas = build_document(sqlite_api.app)["components"]["schemas"]
    for name in ("NodeIn", "NodePatch", "NodeOut"):
        prop = schemas[name]["properties"]["target_role"]
        assert {"type": "null"} in prop["anyOf"] and {"type": "string"} in prop["anyOf"], prop
        assert "only up to this role" in prop["description"]


def test_target_role_set_through_the_api_limits_what_the_annealer_runs(api: Api, tmp_path: Path) -> None:
    node = _node(api, tmp_path)
    assert api.patch(f"/nodes/{node['id']}", {"target_role": "tr-base"}).status_code == 200
    db: Database = api.db
    with db.session() as s:
        deployment = deployments.create(s, "tr-d")
        deployments.add_nodes(s, deployment, [node["id"]], ["tr-app"])
        deployments.commit(s, deployment)
    anneal(db)
    assert states(db) == {("tr-n0", "tr-base"): "active", ("tr-n0", "tr-app"): "todo"}
