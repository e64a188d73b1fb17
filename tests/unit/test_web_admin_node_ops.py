"""The admin node page's target-role field and Redeploy button, through Flask's test client: the
operator sets and clears the target role and redeploys; read-only users see them disabled and the server
refuses anyway; a form without its CSRF token is refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from appliance import nodes
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Event, Node, NodeRole, Role
from tests.webadmin_world import World, login, make_users, make_world
from web.app import create_app


@dataclass
class Site:
    db: Database
    world: World
    settings: Settings

    def client(self, role: str) -> tuple[FlaskClient, str]:
        client = create_app(self.settings, self.db, TESTING=True).test_client()
        return client, login(client, role)


@pytest.fixture
def site(settings: Settings, sqlite_db: Database, tmp_path: Path) -> Iterator[Site]:
    make_users(sqlite_db)
    yield Site(sqlite_db, make_world(sqlite_db, tmp_path), settings)


def _target(db: Database, node_id: int) -> str | None:
    with db.read_session() as s:
        return s.scalar(
            select(Role.name).join(Node, Node.target_role_id == Role.id).where(Node.id == node_id)
        )


def _events(db: Database, action: str) -> list[Event]:
    with db.read_session() as s:
        return list(s.scalars(select(Event).where(Event.action == action).order_by(Event.id)))


def test_operator_sets_and_clears_the_target_role_from_the_node_page(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[0]
    page = client.get(f"/admin/nodes/{node_id}").text
    assert f'action="/admin/nodes/{node_id}/target_role"' in page
    assert "<option>web-app</option>" in page and '<option value="" selected>' in page

    answer = client.post(
        f"/admin/nodes/{node_id}/target_role",
        data={"target_role": "web-base", "csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert answer.status_code == 200
    assert "rack1-n0.test: target role web-base" in answer.text
    assert "<option selected>web-base</option>" in answer.text
    assert _target(site.db, node_id) == "web-base"

    cleared = client.post(
        f"/admin/nodes/{node_id}/target_role",
        data={"target_role": "", "csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert "target role cleared" in cleared.text
    assert _target(site.db, node_id) is None
    events = _events(site.db, "node.target_role")
    assert [(e.actor, e.data) for e in events] == [
        ("operator", {"target_role": "web-base"}),
        ("operator", {"target_role": None}),
    ]


def test_an_unknown_target_role_is_a_readable_message_and_changes_nothing(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[1]
    answer = client.post(
        f"/admin/nodes/{node_id}/target_role",
        data={"target_role": "no-such-role", "csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert answer.status_code == 200
    assert "no role named &#39;no-such-role&#39;" in answer.text and "flash-error" in answer.text
    assert "Traceback" not in answer.text
    assert _target(site.db, node_id) is None


def test_operator_redeploys_from_the_node_page_and_is_told_power_was_not_cycled(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[0]
    with site.db.session() as s:
        nodes.update_node(s, node_id, {"bootenv": "local"})
        s.execute(NodeRole.__table__.update().where(NodeRole.node_id == node_id).values(run_count=3))
    page = client.get(f"/admin/nodes/{node_id}").text
    form = page[page.index(f'<form method="post" action="/admin/nodes/{node_id}/redeploy"') :].split(
        "</form>"
    )[0]
    assert 'data-confirm="Redeploy rack1-n0.test?' in form and ">Redeploy</button>" in form

    answer = client.post(
        f"/admin/nodes/{node_id}/redeploy",
        data={"csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert answer.status_code == 200
    # the world's nodes have no BMC: the reset is done and the page says to power-cycle by hand
    assert "redeploy rack1-n0.test: 2 node-role(s) reset" in answer.text
    assert "power NOT cycled" in answer.text and "flash-error" in answer.text
    with site.db.read_session() as s:
        assert s.get(Node, node_id).bootenv == "discovery"  # type: ignore[union-attr]
        rows = s.execute(select(NodeRole.state, NodeRole.run_count).where(NodeRole.node_id == node_id)).all()
    assert sorted(rows) == [("proposed", 0), ("proposed", 0)]
    (event,) = _events(site.db, "node.redeploy")
    assert event.actor == "operator" and event.subject_id == node_id


def test_readonly_sees_target_role_and_redeploy_disabled_and_the_server_refuses_anyway(site: Site) -> None:
    client, token = site.client("readonly")
    node_id = site.world.node_ids[0]
    page = client.get(f"/admin/nodes/{node_id}").text
    assert 'disabled title="needs the operator role">Redeploy' in page
    assert 'disabled title="needs the operator role">Set target' in page
    assert '<select name="target_role" aria-label="target role" disabled>' in page
    for path, data in (("target_role", {"target_role": "web-base"}), ("redeploy", {})):
        answer = client.post(f"/admin/nodes/{node_id}/{path}", data={**data, "csrf_token": token})
        assert answer.status_code == 403 and "needs the operator role" in answer.text
    assert _target(site.db, node_id) is None
    assert _events(site.db, "node.redeploy") == []


def test_target_role_and_redeploy_forms_without_csrf_token_are_refused(site: Site) -> None:
    client, _ = site.client("operator")
    node_id = site.world.node_ids[0]
    for path, data in (("target_role", {"target_role": "web-base"}), ("redeploy", {})):
        answer = client.post(f"/admin/nodes/{node_id}/{path}", data=data)
        assert answer.status_code == 403 and "CSRF" in answer.text
    assert _target(site.db, node_id) is None
    assert _events(site.db, "node.redeploy") == []
