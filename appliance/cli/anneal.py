"""`kiln anneal status|wait`: has the fleet (or one deployment) converged? Same verdict as GET /anneal."""

from __future__ import annotations

import json
import sys
import time

import click

from appliance.anneal_status import CONVERGED, FAILED, AnnealStatus, anneal_status
from appliance.cli.base import CliContext, json_option, main, pass_cli

# exit codes of `kiln anneal wait` (and `status`): scripts tell a failure from a wait that ran out
EXIT_CONVERGED, EXIT_FAILED, EXIT_WORKING, EXIT_TIMEOUT = 0, 1, 3, 4


@main.group("anneal")
def anneal_group() -> None:
    """Convergence of the annealer's work."""


def _read(cli: CliContext, deployment: str | None) -> AnnealStatus:
    with cli.db.read_session() as session:
        return anneal_status(session, deployment)


def _summary(status: AnnealStatus) -> str:
    counts = ", ".join(f"{state} {n}" for state, n in sorted(status.counts.items())) or "no node-roles"
    where = f"deployment {status.deployment}" if status.deployment else "all deployments"
    return f"{where}: {status.status} ({counts})"


def _report_errors(status: AnnealStatus) -> None:
    for e in status.errors:
        click.echo(
            f"  error: {e['role']} on {e['node']} (node-role {e['node_role']}, attempts {e['attempts']})"
        )
        for line in e["last_log"].splitlines():
            click.echo(f"    {line}")


@anneal_group.command("status")
@click.option("--deployment", "-d", default=None, help="A deployment's name or id (default: all).")
@json_option
@pass_cli
def anneal_status_cmd(cli: CliContext, deployment: str | None, as_json: bool) -> None:
    """Counts by state and the verdict. Exit 0 converged, 3 working, 1 failed."""
    status = _read(cli, deployment)
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
    else:
        click.echo(_summary(status))
        _report_errors(status)
    sys.exit({CONVERGED: EXIT_CONVERGED, FAILED: EXIT_FAILED}.get(status.status, EXIT_WORKING))


@anneal_group.command("wait")
@click.option("--deployment", "-d", default=None, help="A deployment's name or id (default: all).")
@click.option("--timeout", default=600.0, show_default=True, help="Give up after this many seconds.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between looks.")
@pass_cli
def anneal_wait(cli: CliContext, deployment: str | None, timeout: float, interval: float) -> None:
    """Wait until converged (exit 0), failed (exit 1: a node-role is in error) or TIMEOUT (exit 4).

    The bar counts active node-roles out of all committed ones; it can move back when a change sends
    work back to todo (re-annealing).
    """
    deadline = time.monotonic() + timeout
    status = _read(cli, deployment)
    warned = False
    with click.progressbar(
        length=max(status.total, 1), label="annealing", file=sys.stderr, show_pos=True
    ) as bar:
        while True:
            bar.length = max(status.total, 1)
            bar.update(status.done - bar.pos)
            if status.status != "working":
                break
            if status.annealers == 0 and not warned:
                warned = True
                click.echo("\nkiln: no annealer has a recent heartbeat; is kiln-annealer running?", err=True)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))
            status = _read(cli, deployment)
    click.echo(_summary(status))
    if status.status == CONVERGED:
        return
    if status.status == FAILED:
        _report_errors(status)
        sys.exit(EXIT_FAILED)
    click.echo(f"kiln: still working after {timeout:g} s", err=True)
    sys.exit(EXIT_TIMEOUT)
