"""/api/v2/nodes/<id>/power and /bmc against a real ipmi_sim; the BMC password never comes back."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from appliance.config import Settings
from appliance.db import Database
from tests.bmcsim import IPMISimFarm, free_port
from tests.unit.api_support import Api, make_api

pytestmark = pytest.mark.xdist_group("bmc_api")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPMISimFarm]:
    sims = IPMISimFarm(tmp_path_factory.mktemp("ipmi-api")).start(1)
    yield sims
    sims.stop()


@pytest.fixture
def api(settings: Settings, sqlite_db: Database) -> Api:
    return make_api(settings, sqlite_db)


def _node(api: Api, name: str) -> int:
    created = api.post("/nodes", {"name": name})
    assert created.status_code == 201, created.get_json()
    node_id: int = created.get_json()["id"]
    return node_id


def test_bmc_password_is_write_only_everywhere(
    api: Api, farm: IPMISimFarm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = farm.bmcs[0]
    node_id = _node(api, "api-n1")
    put = api.put(
        f"/nodes/{node_id}/bmc",
        {"address": bmc.address, "username": bmc.username, "password": bmc.password, "driver": "ipmi"},
    )
    assert put.status_code == 200, put.get_json()
    assert put.get_json()["password_set"] is True
    answers = [
        put,
        api.get(f"/nodes/{node_id}/bmc"),
        api.get(f"/nodes/{node_id}"),
        api.get("/nodes"),
        api.get(f"/nodes/{node_id}/power?refresh=true"),
        api.get("/events"),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.get_json()
        text = json.dumps(answer.get_json())
        assert bmc.password not in text
        assert "password_enc" not in text
    assert bmc.password not in caplog.text
    # only admins set credentials
    denied = api.put(f"/nodes/{node_id}/bmc", {"password": "x"}, role="operator")
    assert denied.status_code == 403


def test_power_endpoints_drive_the_bmc(api: Api, farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[0]
    node_id = _node(api, "api-n2")
    api.put(
        f"/nodes/{node_id}/bmc",
        {"address": bmc.address, "username": bmc.username, "password": bmc.password},
    )
    on = api.put(f"/nodes/{node_id}/power", {"action": "on"}, role="operator")
    assert on.status_code == 200, on.get_json()
    assert "Chassis Power is on" in bmc.ipmitool("chassis", "power", "status")
    status = api.get(f"/nodes/{node_id}/power?refresh=true", role="readonly")
    assert status.get_json()["power_state"] == "on"
    assert status.get_json()["power_checked_at"] is not None
    off = api.put(f"/nodes/{node_id}/power", {"action": "off"})
    assert off.status_code == 200
    assert bmc.power_file_state() == "off"
    assert [e.data["ok"] for e in api.events("node.power.on")] == [True]
    assert api.put(f"/nodes/{node_id}/power", {"action": "explode"}).status_code == 400
    assert api.put(f"/nodes/{node_id}/power", {"action": "on"}, role="readonly").status_code == 403


def test_bmc_failures_are_json_errors_an_operator_can_act_on(api: Api, farm: IPMISimFarm) -> None:
    bmc = farm.bmcs[0]
    wrong = _node(api, "api-wrong")
    api.put(f"/nodes/{wrong}/bmc", {"address": bmc.address, "username": "admin", "password": "nope-nope"})
    refused = api.put(f"/nodes/{wrong}/power", {"action": "on"})
    assert refused.status_code == 502
    assert "password" in refused.get_json()["error"] and "nope-nope" not in refused.get_json()["error"]

    dead = _node(api, "api-dead")
    api.put(f"/nodes/{dead}/bmc", {"address": f"127.0.0.1:{free_port()}", "username": "a", "password": "b"})
    unreachable = api.get(f"/nodes/{dead}/power?refresh=true")
    assert unreachable.status_code == 504
    assert "answered neither" in unreachable.get_json()["error"]

    bare = _node(api, "api-bare")
    missing = api.put(f"/nodes/{bare}/power", {"action": "on"})
    assert missing.status_code == 409 and missing.get_json()["field"] == "bmc_address"
    assert api.put(f"/nodes/{bare}/bmc", {"address": "ftp://x"}).status_code == 400
    assert api.get("/nodes/999999/power").status_code == 404
