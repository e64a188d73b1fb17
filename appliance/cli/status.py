"""`kiln status`: each service's state, the database and the versions, for people and for scripts.

Service state comes from systemd when it runs this machine (`systemctl is-active kiln-*`), otherwise
from the heartbeat files `kiln serve` keeps in <state_dir>/run/. Annealers anywhere in the fleet show
up through their heartbeat rows in the database.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from appliance.cli.base import CliContext, json_option, main, pass_cli
from appliance.cli.serve import read_heartbeats, service_entry_points
from appliance.config import DEFAULT_CONFIG_PATH
from appliance.db import Database
from appliance.db.migrate import alembic_config, current_revision
from appliance.models import AnnealerHeartbeat, Node

UNIT_SERVICES = ("web", "dhcp", "ra", "tftp", "dns", "annealer", "power-state", "webhooks")
PEER_PACKAGES = ("ipxe", "qemu-system-x86", "postgresql")


def mask_url(url: str) -> str:
    """The database URL with its password replaced by ***."""
    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL is shown as is: it holds no recognisable password
        return url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def unit_states() -> dict[str, str]:
    """systemctl is-active for every Kiln unit (active, inactive, failed, activating...)."""
    units = [f"kiln-{name}.service" for name in UNIT_SERVICES] + ["kiln.target"]
    result = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True, timeout=30)
    states = result.stdout.split()
    return {unit: states[i] if i < len(states) else "unknown" for i, unit in enumerate(units)}


def serve_states(beats: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Each service's state as the live `kiln serve` processes report it."""
    states: dict[str, dict[str, Any]] = {name: {"state": "inactive"} for name in names}
    for beat in beats:
        if not beat["alive"]:
            continue
        for name, state in beat.get("services", {}).items():
            entry: dict[str, Any] = {"state": state, "pid": beat["pid"]}
            if name in beat.get("errors", {}):
                entry["error"] = beat["errors"][name]
            states[name] = entry
    return states


def database_status(db: Database) -> dict[str, Any]:
    info: dict[str, Any] = {"url": mask_url(db.url), "backend": db.engine.dialect.name}
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    info["head"] = head
    try:
        info["revision"] = current_revision(db)
        with db.read_session() as session:
            if db.is_sqlite:
                info["server_version"] = session.scalar(text("select sqlite_version()"))
            else:
                info["server_version"] = session.scalar(text("show server_version"))
            if info["revision"] is not None:
                info["nodes"] = session.scalar(select(func.count()).select_from(Node))
                info["annealers"] = [
                    {
                        "name": hb.name,
                        "host": hb.host,
                        "pid": hb.pid,
                        "seen_seconds_ago": round(
                            (dt.datetime.now(dt.UTC) - hb.seen_at.replace(tzinfo=dt.UTC)).total_seconds(), 1
                        ),
                    }
                    for hb in session.scalars(select(AnnealerHeartbeat).order_by(AnnealerHeartbeat.name))
                ]
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        info["error"] = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return info
    info["at_head"] = info["revision"] == head
    return info


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _deb_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "unknown (no dpkg)"
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}|${Version}", package], capture_output=True, text=True, timeout=30
    )
    status, _, ver = result.stdout.partition("|")
    return ver if result.returncode == 0 and status.endswith(" installed") else "not installed"


def versions() -> dict[str, str]:
    found = {
        "kiln": _version("kiln"),
        "python": platform.python_version(),
        "sqlalchemy": _version("sqlalchemy"),
        "alembic": _version("alembic"),
        "flask": _version("flask"),
        "prometheus-client": _version("prometheus-client"),
    }
    found.update({f"deb:{pkg}": _deb_version(pkg) for pkg in PEER_PACKAGES})
    return found


def collect(cli: CliContext) -> dict[str, Any]:
    settings = cli.settings
    names = sorted(set(UNIT_SERVICES) | set(service_entry_points()))
    report: dict[str, Any] = {
        "config": os.environ.get("KILN_CONFIG", str(DEFAULT_CONFIG_PATH)),
        "state_dir": str(settings.state_dir),
        "dhcp_interfaces": settings.dhcp_interfaces,
    }
    if systemd_running():
        report["supervisor"] = "systemd"
        report["units"] = {unit: {"state": state} for unit, state in unit_states().items()}
    else:
        report["supervisor"] = "kiln serve"
        report["units"] = serve_states(read_heartbeats(settings), names)
    url = settings.effective_database_url
    sqlite_file = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
    if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).exists():
        # looking must not create it (in a directory that may not even be ours)
        report["database"] = {"url": url, "backend": "sqlite", "error": f"{sqlite_file} does not exist yet"}
    else:
        # status must work on a database that was never migrated: open it without upgrading
        db = Database(url)
        try:
            report["database"] = database_status(db)
        finally:
            db.dispose()
    report["versions"] = versions()
    return report


def _print(report: dict[str, Any]) -> None:
    click.echo(f"config      {report['config']}")
    click.echo(f"state dir   {report['state_dir']}")
    click.echo(f"dhcp on     {', '.join(report['dhcp_interfaces']) or '(no interface: DHCP serves nothing)'}")
    click.echo(f"\nservices ({report['supervisor']})")
    for name, unit in report["units"].items():
        extra = f" pid {unit['pid']}" if "pid" in unit else ""
        extra += f"  {unit['error']}" if "error" in unit else ""
        click.echo(f"  {name:<24}{unit['state']}{extra}")
    db = report["database"]
    click.echo(f"\ndatabase    {db['url']}")
    if "error" in db:
        click.echo(f"  unreachable: {db['error']}")
    else:
        state = "up to date" if db["at_head"] else f"behind (head {db['head']}): run `kiln db upgrade`"
        click.echo(
            f"  {db['backend']} {db.get('server_version', '')}, schema {db['revision'] or '(empty)'} {state}"
        )
        if "nodes" in db:
            click.echo(f"  {db['nodes']} nodes, {len(db['annealers'])} annealer heartbeats")
        for hb in db.get("annealers", []):
            click.echo(
                f"    {hb['name']} on {hb['host']} pid {hb['pid']}, seen {hb['seen_seconds_ago']} s ago"
            )
    click.echo("\nversions")
    for name, ver in report["versions"].items():
        click.echo(f"  {name:<24}{ver}")


@main.command("status")
@json_option
@pass_cli
def status_command(cli: CliContext, as_json: bool) -> None:
    """Show each service's state, the database and the versions. Exit 1 if the database is unreachable."""
    report = collect(cli)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    if "error" in report["database"]:
        raise click.exceptions.Exit(1)
