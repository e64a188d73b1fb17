from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from appliance.models import Node
from tests.unit.api_support import Api, api_fixture, sqlite_api_fixture  # noqa: F401  (fixtures)


def _node(api: Api, name: str = "rack1-n01", **fields: object) -> dict[str, object]:
    r = api.post("/nodes", {"name": name, **fields})
    assert r.status_code == 201, r.json
    return r.json  # type: ignore[no-any-return]


def test_node_crud_normalises_macs_and_writes_events_with_actor(api: Api) -> None:
    r = api.post(
        "/nodes",
        {"name": "rack1-n01", "macs": ["52-54-00-AA-BB-01", {"mac": "5254.00aa.bb02", "interface": "eth1"}]},
        role="operator",
    )
    assert r.status_code == 201, r.json
    node = r.json
    assert [m["mac"] for m in node["macs"]] == ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]
    assert node["macs"][0]["primary"] is True
    assert r.headers["ETag"] == '"1"'

    got = api.get(f"/nodes/{node['id']}", role="readonly")
    assert got.status_code == 200 and got.json["name"] == "rack1-n01"
    assert got.json["created_at"].endswith("Z")

    changed = api.patch(f"/nodes/{node['id']}", {"description": "db server", "macs": ["52:54:00:aa:bb:03"]})
    assert changed.status_code == 200, changed.json
    assert changed.json["version"] == 2 and changed.json["description"] == "db server"
    assert [m["mac"] for m in changed.json["macs"]] == ["52:54:00:aa:bb:03"]

    assert api.delete(f"/nodes/{node['id']}", role="operator").status_code == 204
    assert api.get(f"/nodes/{node['id']}").status_code == 404

    create, update, delete = api.events("node.create"), api.events("node.update"), api.events("node.delete")
    assert [e.actor for e in create + update + delete] == ["operator", "admin", "operator"]
    assert update[0].data["changes"]["description"] == "db server"


def test_put_replaces_fields_and_stale_version_gives_409(api: Api) -> None:
    node = _node(api, description="first", macs=["52:54:00:00:00:01"])
    path = f"/nodes/{node['id']}"
    replaced = api.put(path, {"name": "rack1-n01", "state": "ready"}, headers={"If-Match": '"1"'})
    assert replaced.status_code == 200, replaced.json
    assert (
        replaced.json["description"] == ""
        and replaced.json["macs"] == []
        and replaced.json["state"] == "ready"
    )

    stale = api.patch(path, {"description": "late"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 409 and stale.json["field"] == "version"
    stale_body = api.patch(path, {"description": "late", "version": 1})
    assert stale_body.status_code == 409
    assert api.get(path).json["description"] == ""
    fresh = api.patch(path, {"description": "ok", "version": 2})
    assert fresh.status_code == 200 and fresh.json["version"] == 3


def test_bad_node_input_is_400_naming_the_field(api: Api) -> None:
    cases = [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": "ok", "macs": ["zz:zz"]}, "macs[0]"),
        ({"name": "ok", "state": "flying"}, "state"),
        ({"name": "ok", "system_uuid": "nope"}, "system_uuid"),
        ({"name": "ok", "surprise": 1}, "surprise"),
        ({"name": "ok", "bootenv": "no-such-bootenv"}, "bootenv"),
        ({"description": "no name"}, "name"),
    ]
    for body, field in cases:
        r = api.post("/nodes", body)
        assert r.status_code == 400, (body, r.json)
        assert r.json["field"] == field, (body, r.json)
        assert field.split("[")[0] in r.json["error"]
    not_json = api.call("POST", "/nodes", data="name=x", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 400 and not_json.json["field"] == "body"
    assert api.get("/nodes?limit=0").json["field"] == "limit"


def test_duplicate_name_or_mac_is_409(api: Api) -> None:
    _node(api, macs=["52:54:00:00:00:01"])
    assert api.post("/nodes", {"name": "rack1-n01"}).status_code == 409
    clash = api.post("/nodes", {"name": "other", "macs": ["52:54:00:00:00:01"]})
    assert clash.status_code == 409 and clash.json["field"] == "macs"
    assert api.events("node.create").__len__() == 1


def test_node_list_filters_by_name_state_and_mac_and_paginates(api: Api) -> None:
    for i in range(7):
        _node(api, f"n{i}", state="ready" if i % 2 else "new", macs=[f"52:54:00:00:01:{i:02x}"])
    assert [n["name"] for n in api.get("/nodes?state=ready").json["items"]] == ["n1", "n3", "n5"]
    assert [n["name"] for n in api.get("/nodes?name=n4").json["items"]] == ["n4"]
    assert [n["name"] for n in api.get("/nodes?mac=52-54-00-00-01-06").json["items"]] == ["n6"]
    assert [n["name"] for n in api.get("/nodes?q=N5").json["items"]] == ["n5"]
    assert [n["name"] for n in api.get("/nodes?q=01:03").json["items"]] == ["n3"]
    assert [n["name"] for n in api.get("/nodes?q=n&state=ready&limit=2").json["items"]] == ["n1", "n3"]

    seen, cursor, pages = [], None, 0
    while True:
        r = api.get("/nodes?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200
        seen += [n["name"] for n in r.json["items"]]
        pages += 1
        cursor = r.json["next"]
        if cursor is None:
            break
    assert seen == [f"n{i}" for i in range(7)] and pages == 3
    assert api.get("/nodes?cursor=garbage").json["field"] == "cursor"


def test_unknown_ids_routes_and_methods_are_json(sqlite_api: Api) -> None:
    api = sqlite_api
    assert api.get("/nodes/999").status_code == 404
    missing = api.get("/no-such-thing")
    assert missing.status_code == 404 and missing.is_json
    wrong = api.delete("/nodes")
    assert wrong.status_code == 405 and wrong.is_json and "GET" in wrong.headers["Allow"]
    assert api.patch("/nodes/999", {"description": "x"}).status_code == 404


def test_concurrent_updates_from_the_same_version_let_exactly_one_win(api: Api) -> None:
    node = _node(api)
    path = f"/api/v2/nodes/{node['id']}"
    headers = {"Authorization": f"Bearer {api.tokens['operator']}", "If-Match": '"1"'}

    def attempt(i: int) -> int:
        client = api.app.test_client()
        return int(client.patch(path, json={"description": f"writer {i}"}, headers=headers).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = sorted(pool.map(attempt, range(8)))
    assert codes == [200] + [409] * 7
    final = api.get(f"/nodes/{node['id']}").json
    assert final["version"] == 2 and final["description"].startswith("writer ")
    assert len(api.events("node.update")) == 1


def test_unchanged_node_answers_304_to_its_etag(sqlite_api: Api) -> None:
    node = sqlite_api.post("/nodes", {"name": "n1"}).json
    path = f"/nodes/{node['id']}"
    assert sqlite_api.get(path, headers={"If-None-Match": '"1"'}).status_code == 304
    sqlite_api.patch(path, {"description": "changed"})
    fresh = sqlite_api.get(path, headers={"If-None-Match": '"1"'})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == '"2"'


def test_node_list_leaves_out_inventory_that_detail_shows(sqlite_api: Api) -> None:
    node = sqlite_api.post("/nodes", {"name": "n1"}).json
    with sqlite_api.db.session() as s:
        row = s.get(Node, node["id"])
        assert row is not None
        row.inventory = {"cpu": {"count": 64}, "disks": [{"name": f"sd{c}"} for c in "abcdefgh"]}
    assert "inventory" not in sqlite_api.get("/nodes").json["items"][0]
    assert sqlite_api.get(f"/nodes/{node['id']}").json["inventory"]["cpu"] == {"count": 64}
