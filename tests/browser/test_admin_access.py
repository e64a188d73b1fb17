"""In a real browser: a readonly user can press nothing (and the server refuses what the browser might
still send), a POST without the CSRF token is refused, and every page fits 1280 px and a phone
(screenshots under test-artifacts/webadmin/)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from appliance.models import Deployment, Node
from tests.browser.conftest import ARTIFACTS, Kiln

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

PHONE = (390, 844)


def test_readonly_user_cannot_press_buttons(kiln: Kiln) -> None:
    context = kiln.context()
    page = kiln.login(context, "readonly")
    node_id = kiln.world.node_ids[0]
    page.goto(f"/admin/nodes/{node_id}")
    expect(page.locator(".flash-info")).to_contain_text("read-only access")
    buttons = page.locator("main button")
    assert buttons.count() > 0
    for i in range(buttons.count()):
        expect(buttons.nth(i)).to_be_disabled()
    page.goto("/admin/nodes")
    expect(page.get_by_role("button", name="Review…")).to_be_disabled()
    expect(page.locator("input[name=node]").first).to_be_disabled()
    page.goto(f"/admin/deployments/{kiln.world.deployment_id}")
    expect(page.get_by_role("button", name="Commit")).to_be_disabled()
    assert page.get_by_role("link", name="Users").count() == 0
    # a browser that re-enables the button (or forges the form) still gets refused by the server
    status = page.evaluate(
        """async (url) => {
            const token = document.querySelector('input[name=csrf_token]').value;
            const body = new URLSearchParams({csrf_token: token});
            const answer = await fetch(url, {method: 'POST', body});
            return answer.status;
        }""",
        f"/admin/deployments/{kiln.world.deployment_id}/commit",
    )
    assert status == 403
    with kiln.db.read_session() as s:
        assert s.get(Deployment, kiln.world.deployment_id).state == "proposed"  # type: ignore[union-attr]
    context.close()


def test_a_post_without_the_csrf_token_is_refused(kiln: Kiln) -> None:
    context = kiln.context()
    kiln.login(context, "operator")
    node_id = kiln.world.node_ids[0]
    form = context.request.post(
        f"{kiln.url}/admin/nodes/{node_id}/flags", form={"flag": "alive", "value": "false"}
    )
    assert form.status == 403
    assert "CSRF" in form.text()
    api = context.request.post(f"{kiln.url}/api/v2/nodes", data={"name": "forged.test", "macs": []})
    assert api.status == 403
    assert api.json()["field"] == "X-CSRF-Token"
    with kiln.db.read_session() as s:
        assert s.get(Node, node_id).alive is True  # type: ignore[union-attr]
        assert s.scalar(select(Node).where(Node.name == "forged.test")) is None
    context.close()


def _pages(kiln: Kiln) -> dict[str, str]:
    return {
        "login": "/admin/login",
        "dashboard": "/admin/",
        "nodes": "/admin/nodes",
        "node": f"/admin/nodes/{kiln.world.node_ids[0]}",
        "deployments": "/admin/deployments",
        "deployment": f"/admin/deployments/{kiln.world.deployment_id}",
        "networks": "/admin/networks",
        "network": f"/admin/networks/{kiln.world.network_id}",
        "bootenvs": "/admin/bootenvs",
        "barclamps": "/admin/barclamps",
        "events": "/admin/events",
        "users": "/admin/users",
        "error": "/admin/nodes/987654",
    }


@pytest.mark.parametrize("width,height", [(1280, 860), PHONE])
def test_every_page_fits_the_screen_and_is_saved_as_a_screenshot(kiln: Kiln, width: int, height: int) -> None:
    context = kiln.context(width, height)
    page = kiln.login(context, "admin")
    for name, url in _pages(kiln).items():
        if name == "login":
            anonymous = kiln.context(width, height)
            shot = anonymous.new_page()
            shot.goto(url)
        else:
            shot = page
            shot.goto(url)
        expect(shot.locator("h1").first).to_be_visible()
        assert "Traceback" not in shot.content()
        # wide tables and the graph scroll inside their own box; the page itself never scrolls sideways
        overflow = shot.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} overflows by {overflow}px at {width}px"
        shot.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
        if name == "login":
            anonymous.close()
    context.close()
