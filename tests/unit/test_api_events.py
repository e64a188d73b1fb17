from __future__ import annotations

from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixtures)


def test_events_filter_by_action_subject_and_since(api: Api) -> None:
    n1 = api.post("/nodes", {"name": "n1"}, role="operator").json
    n2 = api.post("/nodes", {"name": "n2"}).json
    api.patch(f"/nodes/{n1['id']}", {"state": "ready"})
    creates = api.get("/events?action=node.create").json["items"]
    assert [(e["subject_id"], e["actor"]) for e in creates] == [(n1["id"], "operator"), (n2["id"], "admin")]
    about_n1 = api.get(f"/events?subject_type=node&subject_id={n1['id']}").json["items"]
    assert [e["action"] for e in about_n1] == ["node.create", "node.update"]
    assert [e["action"] for e in api.get("/events?action=node.").json["items"]] == [
        "node.create",
        "node.create",
        "node.update",
    ]
    since = api.get(f"/events?since={creates[-1]['id']}").json["items"]
    assert [e["action"] for e in since] == ["node.update"]
    one = api.get(f"/events/{since[0]['id']}", role="readonly")
    assert one.status_code == 200 and one.json["data"]["changes"] == {"state": "ready"}
    assert api.get("/events/999999").status_code == 404
    assert api.get("/events?since=-1").json["field"] == "since"
    assert api.post("/events", {"action": "x"}).status_code == 405


def test_bootenv_crud_with_versions_and_events(api: Api) -> None:
    listed = api.get("/bootenvs").json["items"]
    seeded = {b["name"] for b in listed}
    assert "discovery" in seeded and "local" in seeded
    created = api.post(
        "/bootenvs",
        {
            "name": "debian-12",
            "kind": "installer",
            "kernel": "http://x/linux",
            "initrd": "http://x/initrd.gz",
        },
        role="operator",
    )
    assert created.status_code == 201, created.json
    path = f"/bootenvs/{created.json['id']}"
    assert api.post("/bootenvs", {"name": "debian-12"}).status_code == 409
    assert api.post("/bootenvs", {"name": "bad name"}).json["field"] == "name"
    changed = api.patch(path, {"kernel_args": "console=ttyS0"}, headers={"If-Match": created.headers["ETag"]})
    assert changed.status_code == 200 and changed.json["version"] == 2
    assert api.patch(path, {"kernel_args": "quiet", "version": 1}).status_code == 409
    api.post("/nodes", {"name": "n1", "bootenv": "debian-12"})
    assert api.delete(path).status_code == 409
    assert api.patch(path, {"name": "debian-13"}).status_code == 409
    api.patch("/nodes/1", {"bootenv": "local"})
    assert api.delete(path).status_code == 204
    assert [e.actor for e in api.events("bootenv.create") + api.events("bootenv.update")] == [
        "operator",
        "admin",
    ]
    assert len(api.events("bootenv.delete")) == 1
