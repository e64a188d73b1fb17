from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.db import Database
from appliance.models import Lease, Network


def test_kiln_dhcp_leases_lists_active_ones_and_all_with_expired(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    now = dt.datetime.now(dt.UTC)
    with sqlite_db.session() as s:
        net = Network(name="admin", cidr="10.9.0.0/24")
        s.add(net)
        s.flush()
        for n, (state, ends) in enumerate(
            [
                ("active", now + dt.timedelta(hours=1)),
                ("active", now - dt.timedelta(minutes=1)),
                ("released", now),
            ]
        ):
            s.add(
                Lease(
                    network_id=net.id,
                    mac=f"52:54:00:00:00:0{n}",
                    address=f"10.9.0.{10 + n}",
                    address_int=0x0A09000A + n,
                    state=state,
                    ends_at=ends,
                )
            )
    runner = CliRunner()
    url = sqlite_db.url
    active = runner.invoke(main, ["--database-url", url, "dhcp", "leases", "--json"])
    assert active.exit_code == 0, active.output
    assert [r["address"] for r in json.loads(active.output)] == ["10.9.0.10"]
    every = runner.invoke(main, ["--database-url", url, "dhcp", "leases", "--all", "--json"])
    states = {r["address"]: r["state"] for r in json.loads(every.output)}
    assert states == {"10.9.0.10": "active", "10.9.0.11": "expired", "10.9.0.12": "released"}
    table = runner.invoke(main, ["--database-url", url, "dhcp", "leases", "--network", "other"])
    assert table.exit_code == 0 and "(none)" in table.output
