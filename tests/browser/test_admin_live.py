"""The operator's loop in a real browser: log in, watch a node get discovered live, open it, power it
off through a real IPMI BMC (ipmi_sim), commit a deployment and watch its node-roles turn active —
all without reloading the page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Dialog, Page, expect
from sqlalchemy import func, select

from appliance import discovery
from appliance.annealer import deployments
from appliance.annealer import service as annealer_service
from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.power import power_nodes
from appliance.models import Node, NodeRole
from tests.bmcsim import IPMISimFarm
from tests.browser.conftest import ARTIFACTS, Kiln
from tests.webadmin_world import INVENTORY
from web.api import events_stream

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

LIVE_SECONDS = 2.0


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def _wait_live(page: Page) -> None:
    """The page's EventSource is connected (kiln.js turns the dot green on `open`)."""
    expect(page.locator("#live-dot.up")).to_be_visible(timeout=5000)


def _mark_no_reload(page: Page) -> None:
    page.evaluate("window.__kilnNoReload = true")


def _still_same_page(page: Page) -> bool:
    return bool(page.evaluate("window.__kilnNoReload === true"))


def test_login_then_a_discovered_node_appears_live_and_opens(kiln: Kiln) -> None:
    context = kiln.context()
    page = kiln.login(context, "operator")
    expect(page.locator("h1")).to_have_text("Dashboard")
    page.goto("/admin/nodes")
    _wait_live(page)
    _mark_no_reload(page)
    mac = "52:54:00:aa:bb:01"
    with kiln.db.session() as s:
        token = discovery.issue_token(s, "discovery", mac=mac)
    inventory = {**INVENTORY, "boot_mac": mac, "nics": [{"name": "eno1", "mac": mac, "link": True}]}
    answer = requests.post(f"{kiln.url}/api/v2/discovery", json={**inventory, "token": token}, timeout=10)
    assert answer.status_code == 201, answer.text
    posted = time.monotonic()
    name = answer.json()["name"]
    link = page.get_by_role("link", name=name)
    expect(link).to_be_visible(timeout=int(LIVE_SECONDS * 1000))
    assert time.monotonic() - posted <= LIVE_SECONDS + 0.3  # expect() polls; allow one poll of slack
    assert _still_same_page(page)
    link.click()
    page.wait_for_url(f"**/admin/nodes/{answer.json()['node_id']}")
    expect(page.locator("#node-summary h1")).to_contain_text(name)
    expect(page.get_by_text("Test CPU 3000")).to_be_visible()
    expect(page.locator("#node-summary")).to_contain_text("registered")
    context.close()


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[IPMISimFarm]:
    farm = IPMISimFarm(tmp_path / "bmcs").start(1)
    yield farm
    farm.stop()


def test_power_buttons_drive_ipmi_sim_and_a_power_change_shows_live(kiln: Kiln, bmc: IPMISimFarm) -> None:
    sim = bmc.bmcs[0]
    sim.set_power_file(True)
    node_id = kiln.world.node_ids[2]
    with kiln.db.session() as s:
        node = s.get(Node, node_id)
        assert node is not None
        set_node_bmc(
            s,
            kiln.settings,
            node,
            address=sim.address,
            username=sim.username,
            password=sim.password,
            driver="ipmi",
            actor="test",
        )
    context = kiln.context()
    page = kiln.login(context, "operator")
    page.goto(f"/admin/nodes/{node_id}")
    page.on("dialog", _accept)
    page.get_by_role("button", name="Power off").click()
    expect(page.locator(".flash-ok")).to_contain_text("power off: 1 done", timeout=30000)
    expect(page.locator("#power-state .badge")).to_have_text("off")
    assert sim.power_file_state() == "off"
    # someone else (the CLI, the API, the poller) powers it on: the open page follows without a reload
    _wait_live(page)
    _mark_no_reload(page)
    results = power_nodes(kiln.db, kiln.settings, [node_id], "on", actor="cli")
    assert results[0].ok, results[0].error
    power_nodes(kiln.db, kiln.settings, [node_id], "status", actor="cli")
    written = time.monotonic()
    expect(page.locator("#power-state .badge")).to_have_text("on", timeout=int(LIVE_SECONDS * 1000))
    assert time.monotonic() - written <= LIVE_SECONDS + 0.3
    assert _still_same_page(page)
    assert sim.power_file_state() == "on"
    context.close()


def test_commit_a_deployment_and_watch_node_roles_turn_active_live(kiln: Kiln) -> None:
    nodes = kiln.world.node_ids[:2]
    with kiln.db.session() as s:
        deployment = deployments.create(s, "browser-live")
        deployments.add_nodes(s, deployment, nodes, ["web-check"])
        dep_id = deployment.id
        total = int(s.scalar(select(func.count()).where(NodeRole.deployment_id == dep_id)) or 0)
    assert total == 6  # web-base, web-app, web-check on two nodes
    stop = threading.Event()
    annealer = threading.Thread(
        target=annealer_service.serve, args=(kiln.settings, kiln.db, stop), kwargs={"workers": 2}, daemon=True
    )
    context = kiln.context()
    try:
        page = kiln.login(context, "operator")
        page.goto(f"/admin/deployments/{dep_id}")
        expect(page.locator("circle.nr")).to_have_count(total)
        expect(page.locator('circle.nr[data-state="proposed"]')).to_have_count(total)
        page.on("dialog", _accept)
        page.get_by_role("button", name="Commit").click()
        expect(page.locator(".flash-ok")).to_contain_text("committed")
        expect(page.locator('circle.nr[data-state="todo"]')).to_have_count(2)  # web-base on each node
        _wait_live(page)
        _mark_no_reload(page)
        # another operator watches the first node's page: its node-role rows follow too
        other = kiln.context()
        node_page = kiln.login(other, "readonly")
        node_page.goto(f"/admin/nodes/{nodes[0]}")
        _wait_live(node_page)
        expect(node_page.locator('#node-roles tr[data-state="todo"]')).to_have_count(1)
        annealer.start()  # only now: every change from here on reaches the pages through the stream
        done_at = _wait_all_active(kiln, dep_id, total)
        expect(page.locator('circle.nr[data-state="active"]')).to_have_count(
            total, timeout=int(LIVE_SECONDS * 1000)
        )
        expect(node_page.locator('#node-roles tr[data-state="active"]')).to_have_count(3)
        assert time.monotonic() - done_at <= LIVE_SECONDS + 0.3
        assert _still_same_page(page)
        page.screenshot(path=str(ARTIFACTS / "deployment-active-1280.png"), full_page=True)
        other.close()
    finally:
        stop.set()
        if annealer.is_alive():
            annealer.join(timeout=15)
        context.close()
    with kiln.db.read_session() as s:
        states = set(s.scalars(select(NodeRole.state).where(NodeRole.deployment_id == dep_id)))
    assert states == {"active"}


def _wait_all_active(kiln: Kiln, deployment_id: int, total: int) -> float:
    """Poll the database until the annealer has every node-role active; the moment it saw that."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with kiln.db.read_session() as s:
            active = s.scalar(
                select(func.count()).where(
                    NodeRole.deployment_id == deployment_id, NodeRole.state == "active"
                )
            )
        if active == total:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError("the annealer did not make every node-role active in 30 s")


def test_a_page_stays_live_by_polling_when_the_server_refuses_streams(
    kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream, "MAX_STREAMS", 0)
    context = kiln.context()
    page = kiln.login(context, "operator")
    page.goto("/admin/nodes")
    expect(page.locator("#live-dot.up")).to_have_attribute("title", "live (polling)", timeout=5000)
    _mark_no_reload(page)
    token = page.request.get(f"{kiln.url}/api/v2/csrf").json()["csrf_token"]
    made = page.request.post(
        f"{kiln.url}/api/v2/nodes",
        data={"name": "polled.test", "macs": ["52:54:00:aa:bb:02"]},
        headers={"X-CSRF-Token": token},
    )
    assert made.status == 201, made.text()
    expect(page.get_by_role("link", name="polled.test")).to_be_visible(timeout=5000)  # one 2 s poll + fetch
    assert _still_same_page(page)
    context.close()
