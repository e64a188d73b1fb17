from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from appliance.cli import main
from appliance.db import Database
from appliance.models import Event


@pytest.fixture
def kiln(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("KILN_STATE_DIR", str(tmp_path / "state"))
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(main, ["--database-url", db.url, *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def test_network_range_allocate_and_node_commands(kiln, db: Database) -> None:  # type: ignore[no-untyped-def]
    kiln("network", "add", "admin", "10.40.0.0/24", "--gateway", "10.40.0.1", "--dns", "10.40.0.1")
    kiln("network", "range", "add", "admin", "hosts", "host", "10.40.0.10", "10.40.0.20")
    kiln("node", "add", "n1", "--mac", "52-54-00-00-00-01", "--mac", "52:54:00:00:00:02")
    assert kiln("network", "allocate", "admin", "hosts", "--node", "n1").output.strip() == "10.40.0.10"
    allocated = json.loads(
        kiln("network", "allocate", "admin", "hosts", "--mac", "5254.0000.0009", "--json").output
    )
    assert allocated["address"] == "10.40.0.11"

    table = kiln("network", "list").output.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "CIDR"] and "admin" in table[1] and "hosts" in table[1]
    shown = json.loads(kiln("network", "show", "admin", "--json").output)
    assert shown["ranges"][0]["used"] == 2 and shown["ranges"][0]["size"] == 11
    assert "10.40.0.10" in kiln("network", "show", "admin").output

    nodes = json.loads(kiln("node", "list", "--json").output)
    assert [(n["name"], n["macs"]) for n in nodes] == [("n1", "52:54:00:00:00:01,52:54:00:00:00:02")]
    assert "n1" in kiln("node", "list").output.splitlines()[1]
    by_mac = json.loads(kiln("node", "show", "52:54:00:00:00:02", "--json").output)
    assert by_mac["name"] == "n1"
    assert "system_uuid" in kiln("node", "show", "n1").output
    assert json.loads(kiln("node", "list", "--state", "ready", "--json").output) == []

    kiln("node", "delete", "n1", "--yes")
    kiln("network", "delete", "admin", "--yes")
    assert kiln("node", "list").output.strip() == "(none)"
    with db.read_session() as s:
        actors = {e.action: e.actor for e in s.scalars(select(Event))}
    for action in (
        "network.create",
        "range.create",
        "node.create",
        "allocation.create",
        "node.delete",
        "network.delete",
    ):
        assert actors[action] == "cli", action


def test_cli_errors_are_one_line_and_exit_1(kiln) -> None:  # type: ignore[no-untyped-def]
    bad = kiln("node", "add", "Bad_Name", ok=False)
    assert bad.exit_code == 1 and "not DNS-safe" in bad.output and "Traceback" not in bad.output
    missing = kiln("node", "show", "ghost", ok=False)
    assert missing.exit_code == 1 and "not found" in missing.output
    kiln("network", "add", "admin", "10.41.0.0/24")
    overlap = kiln("network", "range", "add", "admin", "r", "host", "10.42.0.1", "10.42.0.5", ok=False)
    assert overlap.exit_code == 1 and "outside 10.41.0.0/24" in overlap.output
