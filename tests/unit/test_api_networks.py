from __future__ import annotations

from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixtures)


def _network(api: Api, name: str = "admin", cidr: str = "10.20.0.0/24") -> dict[str, object]:
    r = api.post(
        "/networks", {"name": name, "cidr": cidr, "gateway": "10.20.0.1", "dns_servers": ["10.20.0.1"]}
    )
    assert r.status_code == 201, r.json
    return r.json  # type: ignore[no-any-return]


def test_network_range_allocation_lifecycle(api: Api) -> None:
    net = _network(api)
    nested = api.post(
        f"/networks/{net['id']}/ranges",
        {"name": "hosts", "kind": "host", "first": "10.20.0.10", "last": "10.20.0.12"},
    )
    assert nested.status_code == 201, nested.json
    assert (nested.json["size"], nested.json["used"]) == (3, 0)
    flat = api.post(
        "/ranges",
        {
            "network_id": net["id"],
            "name": "bmc",
            "kind": "bmc",
            "first": "10.20.0.100",
            "last": "10.20.0.101",
        },
    )
    assert flat.status_code == 201, flat.json
    assert [r["name"] for r in api.get(f"/networks/{net['id']}/ranges").json["items"]] == ["hosts", "bmc"]
    assert [r["name"] for r in api.get("/ranges?kind=bmc").json["items"]] == ["bmc"]

    node = api.post("/nodes", {"name": "n1"}).json
    got = [
        api.post(
            "/allocations",
            {"range_id": nested.json["id"], "node_id": node["id"], "mac": "52-54-00-00-00-01"},
            role="operator",
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in got] == [201, 201, 201]
    assert [a.json["address"] for a in got] == ["10.20.0.10", "10.20.0.11", "10.20.0.12"]
    assert got[0].json["mac"] == "52:54:00:00:00:01"
    full = api.post("/allocations", {"range_id": nested.json["id"]})
    assert full.status_code == 409 and "no free address" in full.json["error"]
    assert api.get(f"/ranges/{nested.json['id']}").json["used"] == 3
    assert len(api.get(f"/allocations?node_id={node['id']}").json["items"]) == 3

    assert api.delete(f"/allocations/{got[1].json['id']}").status_code == 204
    again = api.post("/allocations", {"range_id": nested.json["id"], "address": "10.20.0.11"})
    assert again.status_code == 201 and again.json["address"] == "10.20.0.11"

    assert api.delete(f"/networks/{net['id']}").status_code == 204
    assert api.get(f"/ranges/{nested.json['id']}").status_code == 404
    assert api.get("/allocations").json["items"] == []
    actions = [
        e.action
        for e in api.events("network.create") + api.events("range.create") + api.events("network.delete")
    ]
    assert actions == ["network.create", "range.create", "range.create", "network.delete"]


def test_bad_network_and_range_input_names_the_field(api: Api) -> None:
    cases = [
        ("/networks", {"name": "x", "cidr": "10.0.0.1/24"}, "cidr"),
        ("/networks", {"name": "x", "cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}, "gateway"),
        ("/networks", {"name": "x", "cidr": "10.0.0.0/24", "vlan": 5000}, "vlan"),
        ("/networks", {"name": "x", "cidr": "10.0.0.0/24", "dns_servers": ["dns.example"]}, "dns_servers[0]"),
        ("/networks", {"name": "bad name", "cidr": "10.0.0.0/24"}, "name"),
    ]
    for path, body, field in cases:
        r = api.post(path, body)
        assert (r.status_code, r.json["field"]) == (400, field), (body, r.json)
    net = _network(api)
    ranges = f"/networks/{net['id']}/ranges"
    for body, field in [
        ({"name": "r", "kind": "host", "first": "10.21.0.1", "last": "10.20.0.5"}, "first"),
        ({"name": "r", "kind": "host", "first": "10.20.0.9", "last": "10.20.0.5"}, "last"),
        ({"name": "r", "kind": "weird", "first": "10.20.0.1", "last": "10.20.0.5"}, "kind"),
        ({"name": "r", "kind": "host", "first": "10.20.0.2"}, "last"),
    ]:
        r = api.post(ranges, body)
        assert (r.status_code, r.json["field"]) == (400, field), (body, r.json)
    assert (
        api.post(
            ranges, {"name": "a", "kind": "host", "first": "10.20.0.10", "last": "10.20.0.20"}
        ).status_code
        == 201
    )
    overlap = api.post(ranges, {"name": "b", "kind": "dhcp", "first": "10.20.0.20", "last": "10.20.0.30"})
    assert overlap.status_code == 400 and "overlaps" in overlap.json["error"]
    assert (
        api.post(
            "/networks/999/ranges", {"name": "a", "kind": "host", "first": "1.1.1.1", "last": "1.1.1.2"}
        ).status_code
        == 404
    )
    assert api.post("/allocations", {"range_id": 999}).status_code == 404
    assert api.post("/networks", {"name": "admin", "cidr": "10.30.0.0/24"}).status_code == 409


def test_network_and_range_updates_honour_versions(api: Api) -> None:
    net = _network(api)
    path = f"/networks/{net['id']}"
    etag = api.get(path).headers["ETag"]
    ok = api.patch(path, {"mtu": 9000}, headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.json["mtu"] == 9000 and ok.headers["ETag"] == '"2"'
    assert api.patch(path, {"mtu": 1500}, headers={"If-Match": etag}).status_code == 409
    replaced = api.put(path, {"name": "admin", "cidr": "10.20.0.0/24", "version": 2})
    assert replaced.status_code == 200 and replaced.json["mtu"] is None and replaced.json["gateway"] is None

    rng = api.post(
        f"{path}/ranges", {"name": "h", "kind": "host", "first": "10.20.0.10", "last": "10.20.0.20"}
    ).json
    grown = api.patch(f"/ranges/{rng['id']}", {"last": "10.20.0.40", "version": 1})
    assert grown.status_code == 200 and grown.json["size"] == 31
    assert api.patch(f"/ranges/{rng['id']}", {"last": "10.20.0.50", "version": 1}).status_code == 409
    cidr_change = api.patch(path, {"cidr": "10.99.0.0/24"})
    assert cidr_change.status_code == 409 and cidr_change.json["field"] == "cidr"
    assert api.delete(f"/ranges/{rng['id']}", headers={"If-Match": '"1"'}).status_code == 409
    assert api.delete(f"/ranges/{rng['id']}", headers={"If-Match": '"2"'}).status_code == 204
