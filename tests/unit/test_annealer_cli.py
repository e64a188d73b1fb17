"""`kiln barclamp|deployment|noderole|annealer` end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.cli import main
from appliance.db import Database
from tests.unit.annealer_world import make_nodes, write_barclamp

ROLES = """\
roles:
  - name: base
    inputs: {motd: {default: hi}}
    outputs: {motd: {from: motd}}
  - {name: app, requires: [base]}
  - {name: bad, jig: test, jig_data: {fail: nope}}
"""

Kiln = Callable[..., Result]


@pytest.fixture
def kiln(sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kiln:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(main, ["--database-url", sqlite_db.url, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return run


def test_operator_workflow_from_barclamp_to_replay(kiln: Kiln, sqlite_db: Database, tmp_path: Path) -> None:
    assert "3 roles loaded" in kiln("barclamp", "load", str(write_barclamp(tmp_path, ROLES))).output
    make_nodes(sqlite_db, 2)
    kiln("deployment", "create", "web")
    assert (
        "4 node-roles bound"
        in kiln("deployment", "add-node", "web", "n0.test", "n1.test", "--role", "app").output
    )
    kiln("deployment", "add-role", "web", "base", "--data", '{"motd": "welcome"}')
    assert "proposed   4" in kiln("deployment", "show", "web").output
    kiln("deployment", "commit", "web")
    assert "idle after 4 node-roles" in kiln("annealer", "run", "--until-idle").output
    assert "active     4" in kiln("deployment", "show", "web").output
    graph = json.loads(kiln("deployment", "show", "web", "--json").output)
    assert len(graph["node_roles"]["edges"]) == 2

    rows = json.loads(kiln("noderole", "list", "--node", "n0.test", "--json").output)
    base = next(r for r in rows if r["role"] == "base")
    shown = json.loads(kiln("noderole", "show", str(base["id"]), "--json").output)
    assert shown["wall"] == {"motd": "welcome"} and shown["runs"][0]["inputs"] == {"motd": "welcome"}
    replay = kiln("noderole", "replay", str(base["id"])).output
    assert "replay-ok" in replay and "same outputs as recorded" in replay


def test_failed_node_role_is_retried_from_the_cli(kiln: Kiln, sqlite_db: Database, tmp_path: Path) -> None:
    kiln("barclamp", "load", str(write_barclamp(tmp_path, ROLES)))
    make_nodes(sqlite_db, 1)
    kiln("deployment", "create", "d")
    kiln("deployment", "add-node", "d", "n0.test", "--role", "bad")
    kiln("deployment", "commit", "d")
    kiln("annealer", "run", "--until-idle")
    rows = json.loads(kiln("noderole", "list", "--state", "error", "--json").output)
    assert len(rows) == 1
    assert "test jig told to fail: nope" in kiln("noderole", "show", str(rows[0]["id"])).output
    assert (
        "its jig failed (test jig told to fail: nope)" in kiln("noderole", "why", str(rows[0]["id"])).output
    )
    assert "todo" in kiln("noderole", "retry", str(rows[0]["id"])).output
    assert "only an error can be retried" in kiln("noderole", "retry", str(rows[0]["id"]), code=1).output


def test_bad_barclamp_is_one_line_with_file_and_line(kiln: Kiln, tmp_path: Path) -> None:
    directory = write_barclamp(tmp_path, "roles:\n  - {name: a, requires: [ghost]}\n")
    result = kiln("barclamp", "load", str(directory), code=1)
    assert result.output.strip() == (
        f"kiln: {directory / 'barclamp.yaml'}:3: role a requires unknown role 'ghost'"
    )
