"""`kiln status`: services (from `kiln serve` heartbeats here: this machine runs no systemd), the
database with its password masked and its schema revision, and the versions of Kiln and its peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.cli import main
from appliance.cli.status import mask_url, systemd_running
from appliance.db import create_database
from tests.pgserver import PostgresServer
from tests.unit.serve_support import Serve


def status(env: dict[str, str], *args: str) -> Result:
    """`kiln status` in this process (a subprocess per call costs seconds of imports on a busy CI)."""
    return CliRunner().invoke(main, ["status", *args], env=env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    create_database(url).dispose()
    return {
        "KILN_CONFIG": str(tmp_path / "absent.toml"),
        "KILN_STATE_DIR": str(tmp_path / "state"),
        "KILN_DATABASE_URL": url,
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    runner = Serve(tmp_path)
    yield runner
    runner.kill()


def _dpkg_version(package: str) -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
    ).stdout


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql+psycopg://kiln:s3cr3t@db.example.net:5432/kiln") == (
        "postgresql+psycopg://kiln:***@db.example.net:5432/kiln"
    )
    assert mask_url("postgresql+psycopg://kiln@db/kiln") == "postgresql+psycopg://kiln@db/kiln"
    assert mask_url("sqlite:////var/lib/kiln/kiln.db") == "sqlite:////var/lib/kiln/kiln.db"


def test_status_reports_a_migrated_sqlite_database_at_head_and_the_versions(env: dict[str, str]) -> None:
    result = status(env, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    db = report["database"]
    assert db["backend"] == "sqlite"
    assert db["at_head"] is True and db["revision"] == db["head"]
    assert db["nodes"] == 0
    versions = report["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["kiln"] != "not installed"
    assert versions["deb:ipxe"] == _dpkg_version("ipxe")
    human = status(env)
    assert human.exit_code == 0
    assert "up to date" in human.stdout
    assert f"deb:ipxe                {_dpkg_version('ipxe')}" in human.stdout


def test_status_says_when_the_schema_is_behind(tmp_path: Path, env: dict[str, str]) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade = CliRunner().invoke(
        main, ["--database-url", url, "db", "upgrade", "--revision", "0001"], env=env
    )
    assert upgrade.exit_code == 0, upgrade.output
    result = status({**env, "KILN_DATABASE_URL": url})
    assert result.exit_code == 0, result.stderr
    assert "schema 0001 behind" in result.stdout
    assert "run `kiln db upgrade`" in result.stdout


def test_status_masks_the_password_of_a_postgresql_url(postgres: PostgresServer, env: dict[str, str]) -> None:
    url = postgres.create_database(f"status_{os.getpid()}").replace("postgres@", "postgres:hunter2-pw@")
    create_database(url).dispose()
    result = status({**env, "KILN_DATABASE_URL": url}, "--json")
    assert result.exit_code == 0, result.stderr
    assert "hunter2" not in result.output
    report = json.loads(result.stdout)
    assert report["database"]["backend"] == "postgresql"
    assert report["database"]["url"].startswith("postgresql+psycopg://postgres:***@/")
    assert report["database"]["at_head"] is True


def test_an_unreachable_database_exits_1_without_leaking_the_password(env: dict[str, str]) -> None:
    url = "postgresql+psycopg://kiln:hunter2-pw@127.0.0.1:1/kiln?connect_timeout=5"
    result = status({**env, "KILN_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "unreachable" in result.stdout
    assert "kiln:***@127.0.0.1:1" in result.stdout
    assert "hunter2" not in result.output


def test_status_never_creates_a_missing_sqlite_database(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nowhere" / "kiln.db"
    result = status({**env, "KILN_DATABASE_URL": f"sqlite:///{missing}"})
    assert result.exit_code == 1
    assert "does not exist yet" in result.stdout
    assert not missing.parent.exists()


def test_status_shows_what_a_running_kiln_serve_runs_and_what_failed(serve: Serve) -> None:
    assert not systemd_running(), "this test covers machines without systemd"
    serve.start("--skip", ",".join(["crasher", "hang", *_real_services()]))
    serve.wait_for(lambda: serve.heartbeat().get("services", {}).get("ticker") == "active", "heartbeat")  # type: ignore[union-attr]
    env = {k: v for k, v in serve.env.items() if k.startswith(("KILN_", "PYTHONPATH"))}
    report = json.loads(status(env, "--json").stdout)
    assert report["supervisor"] == "kiln serve"
    assert serve.proc is not None
    assert report["units"]["ticker"] == {"state": "active", "pid": serve.proc.pid}
    assert report["units"]["broken"]["state"] == "failed"
    assert "half-written module" in report["units"]["broken"]["error"]
    assert report["units"]["web"]["state"] == "inactive"
    human = status(env).stdout
    assert f"ticker                  active pid {serve.proc.pid}" in human

    serve.proc.terminate()
    serve.finish()
    after = json.loads(status(env, "--json").stdout)
    assert all(unit["state"] != "active" for unit in after["units"].values()), after["units"]


def test_a_heartbeat_left_by_a_dead_process_counts_as_inactive(env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    (run / f"serve-{proc.pid}.json").write_text(
        json.dumps(
            {"pid": proc.pid, "heartbeat": 4e9, "interval": 2, "services": {"dns": "active"}, "errors": {}}
        )
    )
    report = json.loads(status(env, "--json").stdout)
    assert report["units"]["dns"]["state"] == "inactive"


def _real_services() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group="kiln.services"))
