"""Anneal status: GET /api/v2/anneal (200/202/409 with counts) and `kiln anneal status|wait`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.anneal_status import anneal_status, verdict
from appliance.annealer import deployments, node_ops
from appliance.annealer.service import serve as annealer_serve
from appliance.cli import main
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Node
from tests.unit.annealer_world import anneal, load, make_nodes
from tests.unit.api_support import Api, api_fixture  # noqa: F401  (fixture)

ROLES = """\
roles:
  - {name: base}
  - {name: app, requires: [base]}
  - {name: bad, jig: test, jig_data: {fail: nope}}
  - {name: slow, jig: test, jig_data: {sleep: 0.3}}
"""


def bind(db: Database, name: str, nodes: list[int], roles: list[str], *, commit: bool = True) -> None:
    with db.session() as session:
        deployment = deployments.create(session, name)
        deployments.add_nodes(session, deployment, nodes, roles)
        if commit:
            deployments.commit(session, deployment)


def test_verdict_failed_beats_working_beats_converged() -> None:
    assert verdict({}) == "converged"
    assert verdict({"active": 3, "proposed": 2}) == "converged"
    for state in ("todo", "transition", "blocked"):
        assert verdict({"active": 3, state: 1}) == "working"
    assert verdict({"todo": 5, "error": 1}) == "failed"


def test_api_answers_202_while_working_200_when_converged_409_on_error(api: Api, tmp_path: Path) -> None:
    load(api.db, tmp_path, ROLES)
    nodes = make_nodes(api.db, 3)
    assert api.get("/anneal").status_code == 200  # nothing to do is converged
    bind(api.db, "web", nodes, ["app"])
    bind(api.db, "idle", nodes[:1], ["base"], commit=False)

    working = api.get("/anneal", role="readonly")
    assert working.status_code == 202, working.json
    assert working.json["status"] == "working"
    assert working.json["counts"] == {"todo": 3, "blocked": 3, "proposed": 1}
    assert working.json["total"] == 6 and working.json["active"] == 0

    anneal(api.db)
    converged = api.get("/anneal")
    assert converged.status_code == 200, converged.json
    assert converged.json["counts"] == {"active": 6, "proposed": 1}  # proposed work holds nothing back
    assert converged.json["errors"] == []

    bind(api.db, "broken", nodes[:2], ["bad"])
    anneal(api.db)
    failed = api.get("/anneal")
    assert failed.status_code == 409, failed.json
    assert failed.json["status"] == "failed" and failed.json["counts"]["error"] == 2
    assert {e["node"] for e in failed.json["errors"]} == {"n0.test", "n1.test"}
    assert all(e["role"] == "bad" and "failing as asked" in e["last_log"] for e in failed.json["errors"])

    # one deployment at a time: `web` converged even though `broken` failed
    by_name = api.get("/anneal?deployment=web")
    assert by_name.status_code == 200 and by_name.json["deployment"] == "web"
    with api.db.read_session() as s:
        broken_id = deployments.get_deployment(s, "broken").id
    assert api.get(f"/anneal?deployment={broken_id}").status_code == 409
    missing = api.get("/anneal?deployment=nope")
    assert missing.status_code == 404 and missing.json["field"] == "deployment"
    assert api.get("/anneal", role=None).status_code == 401
    assert api.get("/anneal?bogus=1").status_code == 400


def test_anneal_status_counts_live_annealers_by_heartbeat(db: Database, settings: Settings) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=annealer_serve, args=(settings, db, stop))
    thread.start()
    try:
        deadline = 50
        for _ in range(deadline * 10):
            with db.read_session() as s:
                if anneal_status(s).annealers == 1:
                    break
            stop.wait(0.1)
        else:
            pytest.fail("the running annealer's heartbeat was never counted")
    finally:
        stop.set()
        thread.join(timeout=30)
    with db.read_session() as s:
        assert anneal_status(s).annealers == 0  # a stopped annealer removes its heartbeat


@pytest.fixture
def kiln(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, ["--database-url", db.url, *args], catch_exceptions=False)

    return run


def test_cli_wait_exits_0_once_a_running_annealer_converges(
    kiln: Callable[..., Result], db: Database, settings: Settings, tmp_path: Path
) -> None:
    load(db, tmp_path, ROLES)
    bind(db, "web", make_nodes(db, 2), ["app", "slow"])
    assert kiln("anneal", "status").exit_code == 3
    stop = threading.Event()
    thread = threading.Thread(target=annealer_serve, args=(settings, db, stop))
    thread.start()
    try:
        result = kiln("anneal", "wait", "--deployment", "web", "--timeout", "60", "--interval", "0.1")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert "deployment web: converged (active 6)" in result.output
    assert kiln("anneal", "status").exit_code == 0


def test_cli_wait_exits_1_on_error_and_names_the_failed_node_role(
    kiln: Callable[..., Result], db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, ROLES)
    bind(db, "broken", make_nodes(db, 1), ["bad", "base"])
    anneal(db)
    result = kiln("anneal", "wait", "--timeout", "5")
    assert result.exit_code == 1, result.output
    assert "failed (active 1, error 1)" in result.output
    assert "error: bad on n0.test" in result.output and "failing as asked" in result.output
    assert kiln("anneal", "status", "--json").exit_code == 1


def test_cli_wait_exits_4_when_the_timeout_passes_first(
    kiln: Callable[..., Result], db: Database, tmp_path: Path
) -> None:
    load(db, tmp_path, ROLES)
    bind(db, "web", make_nodes(db, 1), ["base"])  # no annealer runs: it stays todo
    result = kiln("anneal", "wait", "-d", "web", "--timeout", "0.5", "--interval", "0.1")
    assert result.exit_code == 4, result.output
    assert "working (todo 1)" in result.output
    assert "no annealer has a recent heartbeat" in result.output
    assert "still working after 0.5 s" in result.output
    unknown = kiln("anneal", "wait", "-d", "nope", "--timeout", "1")
    assert unknown.exit_code == 1 and "deployment 'nope' not found" in unknown.output


def test_parked_node_roles_do_not_hold_convergence_back(db: Database, tmp_path: Path) -> None:
    load(db, tmp_path, ROLES)
    dead, targeted = make_nodes(db, 2)
    with db.session() as session:
        session.get_one(Node, dead).alive = False
        node_ops.set_target_role(session, targeted, "base")
    bind(db, "d", [dead, targeted], ["app"])
    anneal(db)
    with db.read_session() as session:
        status = anneal_status(session, "d")
    # dead node: base todo + app blocked; targeted node: base active, app todo outside its scope
    assert status.counts == {"active": 1, "parked": 3}
    assert status.status == "converged" and status.http_status == 200
    with db.session() as session:
        session.get_one(Node, dead).alive = True
    with db.read_session() as session:
        assert anneal_status(session, "d").status == "working"
