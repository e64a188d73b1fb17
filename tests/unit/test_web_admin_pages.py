"""Admin pages through Flask's test client: each page renders for each role, permissions, CSRF, errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from appliance import nodes
from appliance.config import Settings
from appliance.db import Database, create_database
from appliance.models import Deployment, Event, Node, NodeRole, Role, User
from tests.webadmin_world import World, add_run, csrf_of, login, make_users, make_world
from web.app import create_app


@dataclass
class Site:
    db: Database
    world: World
    settings: Settings

    def client(self, role: str | None = None) -> tuple[FlaskClient, str]:
        app = create_app(self.settings, self.db, TESTING=True)
        client = app.test_client()
        token = login(client, role) if role else ""
        return client, token


def _site(settings: Settings, db: Database, tmp_path: Path) -> Site:
    make_users(db)
    world = make_world(db, tmp_path)
    with db.read_session() as s:
        first = s.scalar(select(NodeRole.id).order_by(NodeRole.id))
    assert first is not None
    add_run(db, first)
    return Site(db, world, settings)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One rack for the whole module (building it costs argon2 hashes and migrations): tests here may
    change it only in ways the others do not look at."""
    root = tmp_path_factory.mktemp("admin-pages")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_CONFIG", str(root / "absent.toml"))
        settings = Settings(
            state_dir=root / "state",
            database_url=f"sqlite:///{root / 'kiln.db'}",
            secret_key="test-secret-key-not-for-production",
            tftp_root=root / "tftp",
        )
    database = create_database(settings.effective_database_url)
    yield _site(settings, database, root)
    database.dispose()


@pytest.fixture
def fresh_site(settings: Settings, sqlite_db: Database, tmp_path: Path) -> Iterator[Site]:
    yield _site(settings, sqlite_db, tmp_path)


@pytest.fixture
def any_site(settings: Settings, db: Database, tmp_path: Path) -> Iterator[Site]:
    """On SQLite and on PostgreSQL: the pages' grouped queries must work on both."""
    yield _site(settings, db, tmp_path)


def _pages(world: World) -> list[str]:
    node = world.node_ids[0]
    return [
        "/admin/",
        "/admin/nodes",
        "/admin/nodes?q=rack1-n1&sort=state&dir=desc",
        "/admin/nodes?q=52:54:00:00:00:02",
        f"/admin/nodes/{node}",
        "/admin/deployments",
        f"/admin/deployments/{world.deployment_id}",
        "/admin/networks",
        f"/admin/networks/{world.network_id}",
        "/admin/bootenvs",
        "/admin/barclamps",
        "/admin/events",
        "/admin/events?action=node.&subject_type=node",
    ]


def test_every_page_renders_for_every_role(any_site: Site) -> None:
    for role in ("admin", "operator", "readonly"):
        client, _ = any_site.client(role)
        for url in _pages(any_site.world):
            answer = client.get(url)
            assert answer.status_code == 200, (role, url, answer.text[:500])
            assert "Traceback" not in answer.text
            assert "<h1" in answer.text


def test_pages_show_the_world(site: Site) -> None:
    client, _ = site.client("operator")
    node_page = client.get(f"/admin/nodes/{site.world.node_ids[0]}").text
    for expected in (
        "rack1-n0.test",
        "Test CPU 3000",
        "64.0 GiB",
        "SSD-480",
        "10.20.0.10",
        "web-base",
        "ran fine",
    ):
        assert expected in node_page
    graph = client.get(f"/admin/deployments/{site.world.deployment_id}").text
    assert "<svg" in graph and 'data-node-role="' in graph and "web-app" in graph
    networks = client.get("/admin/networks").text
    assert "1 / 10" in networks  # one allocation in the host range
    assert "1 / 100" in networks  # one active lease in the pool


def test_logged_out_pages_redirect_to_login(site: Site) -> None:
    client, _ = site.client()
    answer = client.get("/admin/nodes?state=ready")
    assert answer.status_code == 302
    assert (
        "/admin/login?next=/admin/nodes?state%3Dready" in answer.headers["Location"]
        or "/admin/login" in answer.headers["Location"]
    )


def test_wrong_password_shows_a_message_and_repeated_failures_are_throttled(site: Site) -> None:
    client, _ = site.client()
    token = csrf_of(client.get("/admin/login").text)
    answers = [
        client.post("/admin/login", data={"username": "admin", "password": "nope-nope", "csrf_token": token})
        for _ in range(7)
    ]
    assert answers[0].status_code == 401
    assert "wrong username or password" in answers[0].text
    assert answers[-1].status_code == 429
    assert "too many failed logins" in answers[-1].text
    assert answers[-1].headers["Retry-After"]


def test_login_form_without_csrf_is_refused(site: Site) -> None:
    client, _ = site.client()
    client.get("/admin/login")
    answer = client.post("/admin/login", data={"username": "admin", "password": "correct horse battery"})
    assert answer.status_code == 403


def test_readonly_sees_disabled_buttons_and_the_server_refuses_anyway(site: Site) -> None:
    client, token = site.client("readonly")
    node_id = site.world.node_ids[0]
    page = client.get(f"/admin/nodes/{node_id}").text
    assert 'disabled title="needs the operator role">Power off' in page
    assert 'disabled title="needs the operator role">Re-provision' in page
    answer = client.post(
        f"/admin/nodes/{node_id}/flags", data={"flag": "alive", "value": "false", "csrf_token": token}
    )
    assert answer.status_code == 403
    assert "needs the operator role" in answer.text
    commit = client.post(f"/admin/deployments/{site.world.deployment_id}/commit", data={"csrf_token": token})
    assert commit.status_code == 403
    with site.db.read_session() as s:
        assert s.get(Node, node_id).alive is True  # type: ignore[union-attr]
        assert s.get(Deployment, site.world.deployment_id).state == "proposed"  # type: ignore[union-attr]


def test_operator_form_post_without_csrf_token_is_refused(site: Site) -> None:
    client, _ = site.client("operator")
    node_id = site.world.node_ids[0]
    answer = client.post(f"/admin/nodes/{node_id}/flags", data={"flag": "alive", "value": "false"})
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    with site.db.read_session() as s:
        assert s.get(Node, node_id).alive is True  # type: ignore[union-attr]


def test_api_post_with_the_session_cookie_but_no_csrf_header_is_refused(site: Site) -> None:
    client, token = site.client("operator")
    refused = client.post("/api/v2/nodes", json={"name": "sneaky.test", "macs": []})
    assert refused.status_code == 403
    accepted = client.post(
        "/api/v2/nodes", json={"name": "honest.test", "macs": []}, headers={"X-CSRF-Token": token}
    )
    assert accepted.status_code == 201


def test_operator_toggles_a_flag_and_sees_the_message(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[1]
    answer = client.post(
        f"/admin/nodes/{node_id}/flags",
        data={"flag": "available", "value": "false", "csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert answer.status_code == 200
    assert "available set to no" in answer.text
    with site.db.read_session() as s:
        assert s.get(Node, node_id).available is False  # type: ignore[union-attr]
        assert (
            s.scalar(select(Event).where(Event.action == "node.update", Event.actor == "operator"))
            is not None
        )


def test_an_action_error_is_a_readable_message_not_a_traceback(site: Site) -> None:
    client, token = site.client("operator")
    with site.db.read_session() as s:
        nr = s.scalar(select(NodeRole.id).order_by(NodeRole.id))
    answer = client.post(
        f"/admin/node_roles/{nr}/retry", data={"csrf_token": token, "next": "/admin/"}, follow_redirects=True
    )
    assert answer.status_code == 200
    assert "only an error can be retried" in answer.text
    assert "Traceback" not in answer.text


def test_power_without_a_bmc_says_so(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[0]
    answer = client.post(
        f"/admin/nodes/{node_id}/power",
        data={"power": "off", "csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert "has no BMC address" in answer.text


def test_missing_things_are_404_pages(site: Site) -> None:
    client, _ = site.client("readonly")
    answer = client.get("/admin/nodes/999999")
    assert answer.status_code == 404
    assert "node 999999 not found" in answer.text
    assert "<html" in answer.text


def test_users_page_is_for_admins_only(site: Site) -> None:
    client, token = site.client("operator")
    assert client.get("/admin/users").status_code == 403
    refused = client.post(
        "/admin/users",
        data={"username": "eve", "password": "longenough1", "role": "admin", "csrf_token": token},
    )
    assert refused.status_code == 403
    assert "Users</a>" not in client.get("/admin/").text


def test_admin_creates_changes_and_deletes_a_user(site: Site) -> None:
    client, token = site.client("admin")
    made = client.post(
        "/admin/users",
        data={
            "username": "dana",
            "password": "longenough1",
            "role": "operator",
            "csrf_token": token,
            "next": "/admin/users",
        },
        follow_redirects=True,
    )
    assert "user dana (operator) created" in made.text
    short = client.post(
        "/admin/users",
        data={
            "username": "eve",
            "password": "short",
            "role": "operator",
            "csrf_token": token,
            "next": "/admin/users",
        },
        follow_redirects=True,
    )
    assert "password" in short.text and "at least 8" in short.text
    with site.db.read_session() as s:
        dana = s.scalar(select(User).where(User.username == "dana"))
    assert dana is not None
    client.post(f"/admin/users/{dana.id}", data={"role": "readonly", "disabled": "true", "csrf_token": token})
    client.post(f"/admin/users/{dana.id}/delete", data={"csrf_token": token})
    with site.db.read_session() as s:
        assert s.scalar(select(User).where(User.username == "dana")) is None


def test_bulk_action_asks_for_confirmation_then_binds_nodes(site: Site) -> None:
    client, token = site.client("operator")
    third = site.world.node_ids[2]
    form = {
        "csrf_token": token,
        "action": "deploy",
        "deployment": str(site.world.deployment_id),
        "roles": "web-app",
        "node": [str(third)],
    }
    review = client.post("/admin/nodes/bulk", data=form)
    assert review.status_code == 200
    assert "Add to deployment: 1 node?" in review.text and "rack1-n2.test" in review.text
    with site.db.read_session() as s:
        assert s.scalar(select(NodeRole.id).where(NodeRole.node_id == third)) is None
    done = client.post("/admin/nodes/bulk", data={**form, "confirm": "yes"}, follow_redirects=True)
    assert "1 node(s) added to web-prod" in done.text
    with site.db.read_session() as s:
        assert s.scalar(select(NodeRole.id).where(NodeRole.node_id == third)) is not None


def test_commit_and_propose_from_the_deployment_page(fresh_site: Site) -> None:
    site = fresh_site
    client, token = site.client("operator")
    dep = site.world.deployment_id
    client.post(f"/admin/deployments/{dep}/commit", data={"csrf_token": token})
    with site.db.read_session() as s:
        assert s.get(Deployment, dep).state == "committed"  # type: ignore[union-attr]
        states = set(s.scalars(select(NodeRole.state).where(NodeRole.deployment_id == dep)))
    assert states <= {"todo", "blocked"} and "todo" in states
    graph = client.get(f"/admin/deployments/{dep}?fragment=graph").text
    assert graph.startswith('\n<div id="deployment-graph"') or graph.lstrip().startswith(
        '<div id="deployment-graph"'
    )
    assert 'data-state="todo"' in graph
    client.post(f"/admin/deployments/{dep}/propose", data={"csrf_token": token})
    with site.db.read_session() as s:
        assert s.get(Deployment, dep).state == "proposed"  # type: ignore[union-attr]


def test_create_deployment_and_add_nodes_by_name(site: Site) -> None:
    client, token = site.client("operator")
    made = client.post("/admin/deployments", data={"name": "db-tier", "csrf_token": token})
    assert made.status_code == 302
    with site.db.read_session() as s:
        dep = s.scalar(select(Deployment).where(Deployment.name == "db-tier"))
    assert dep is not None
    client.post(f"/admin/deployments/{dep.id}/roles", data={"role": "web-base", "csrf_token": token})
    client.post(f"/admin/deployments/{dep.id}/nodes", data={"nodes": "rack1-n2.test", "csrf_token": token})
    with site.db.read_session() as s:
        assert s.scalar(select(NodeRole.id).where(NodeRole.deployment_id == dep.id)) is not None
    unknown = client.post(
        f"/admin/deployments/{dep.id}/nodes",
        data={"nodes": "ghost.test", "csrf_token": token},
        follow_redirects=True,
    )
    assert "no such node: ghost.test" in unknown.text


def test_fragment_is_only_that_section_and_unknown_fragment_is_400(site: Site) -> None:
    client, _ = site.client("readonly")
    part = client.get(f"/admin/nodes/{site.world.node_ids[0]}?fragment=roles").text
    assert part.lstrip().startswith('<section id="node-roles"') and "<html" not in part
    assert client.get("/admin/nodes?fragment=nope").status_code == 400


def test_logout_ends_the_session(site: Site) -> None:
    client, token = site.client("readonly")
    client.post("/admin/logout", data={"csrf_token": token})
    assert client.get("/admin/nodes").status_code == 302


def test_an_unexpected_error_is_a_page_with_a_request_id_not_a_traceback(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from web.admin import dashboard

    def broken(_session: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(dashboard, "dashboard_context", broken)
    client, _ = site.client("readonly")
    answer = client.get("/admin/")
    assert answer.status_code == 500
    assert "Something went wrong" in answer.text and "request " in answer.text
    assert "secret internals" not in answer.text and "Traceback" not in answer.text


def test_bulk_power_reports_each_node_that_failed(site: Site) -> None:
    client, token = site.client("operator")
    ids = [str(i) for i in site.world.node_ids[:2]]
    with site.db.read_session() as s:
        before = s.scalar(select(func.max(Event.id))) or 0
    form = {"csrf_token": token, "action": "power-off", "node": ids, "confirm": "yes", "next": "/admin/nodes"}
    answer = client.post("/admin/nodes/bulk", data=form, follow_redirects=True)
    assert "power off: 0 done, 2 failed" in answer.text
    assert "node rack1-n0.test has no BMC address" in answer.text
    assert "node rack1-n1.test has no BMC address" in answer.text
    with site.db.read_session() as s:
        failed = s.scalars(select(Event).where(Event.action == "node.power.off", Event.id > before)).all()
    assert len(failed) == 2


def test_node_page_shows_the_last_runs_of_every_node_role(site: Site) -> None:
    client, _ = site.client("readonly")
    node_id = site.world.node_ids[1]
    with site.db.read_session() as s:
        busy, quiet = s.scalars(
            select(NodeRole.id).where(NodeRole.node_id == node_id).order_by(NodeRole.id)
        ).all()
    for _ in range(130):
        add_run(site.db, busy)
    add_run(site.db, quiet, status="error")
    page = client.get(f"/admin/nodes/{node_id}").text
    quiet_part = page[page.index(f'data-node-role="{quiet}"') :]
    assert "· error ·" in quiet_part.split("</tr>")[0]
    assert page.count("ran fine") == 4  # three runs of the busy one, the quiet one's single run


def test_a_big_deployment_draws_the_first_nodes_and_says_how_many_more(fresh_site: Site) -> None:
    from tests.unit.annealer_world import make_nodes

    ids = make_nodes(fresh_site.db, 45, prefix="bulk")
    client, token = fresh_site.client("operator")
    client.post("/admin/deployments", data={"name": "big", "csrf_token": token})
    with fresh_site.db.read_session() as s:
        big = s.scalar(select(Deployment.id).where(Deployment.name == "big"))
    names = ",".join(str(i) for i in ids)
    client.post(
        f"/admin/deployments/{big}/nodes", data={"nodes": names, "roles": "web-base", "csrf_token": token}
    )
    page = client.get(f"/admin/deployments/{big}").text
    assert page.count('class="nr"') == 40
    assert "+5 more nodes" in page


def test_reprovision_without_a_bmc_sets_the_bootenv_and_says_the_cycle_failed(site: Site) -> None:
    client, token = site.client("operator")
    node_id = site.world.node_ids[2]
    with site.db.session() as s:
        nodes.update_node(s, node_id, {"bootenv": "local"})
    answer = client.post(
        f"/admin/nodes/{node_id}/reprovision",
        data={"csrf_token": token, "next": f"/admin/nodes/{node_id}"},
        follow_redirects=True,
    )
    assert "bootenv discovery set, but power cycle: 0 done, 1 failed" in answer.text
    with site.db.read_session() as s:
        assert s.get(Node, node_id).bootenv == "discovery"  # type: ignore[union-attr]


def test_node_page_says_why_a_blocked_node_role_waits_naming_its_parent(fresh_site: Site) -> None:
    from appliance.annealer import deployments

    with fresh_site.db.session() as s:
        deployments.commit(s, deployments.get_deployment(s, fresh_site.world.deployment_id))
    node_id = fresh_site.world.node_ids[0]
    client, _ = fresh_site.client("readonly")
    page = client.get(f"/admin/nodes/{node_id}").text
    with fresh_site.db.read_session() as s:
        states_by_role = dict(
            s.execute(
                select(Role.name, NodeRole.state)
                .join(NodeRole, NodeRole.role_id == Role.id)
                .where(NodeRole.node_id == node_id)
            ).all()
        )
        app_id = s.scalar(
            select(NodeRole.id)
            .join(Role, Role.id == NodeRole.role_id)
            .where(NodeRole.node_id == node_id, Role.name == "web-app")
        )
    assert states_by_role == {"web-base": "todo", "web-app": "blocked"}
    row = page[page.index(f'data-node-role="{app_id}"') :].split("</tr>")[0]
    assert "Why blocked:" in row
    assert "parent web-base on rack1-n0.test is todo" in row
    # and the parent's own reason, nested under it: nothing has ever claimed work here
    assert "no annealer has ever reported" in row
