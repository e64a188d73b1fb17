"""`kiln barclamp`, `kiln deployment`, `kiln noderole` and `kiln annealer run`."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from appliance.annealer import barclamps, deployments, explain, runlog
from appliance.annealer.graph import deployment_graph
from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.errors import InvalidInput, NotFound
from appliance.models import Node, NodeRole, Role


def _node_id(session: Any, key: str) -> int:
    query = (
        select(Node.id).where(Node.id == int(key))
        if key.isdigit()
        else select(Node.id).where(Node.name == key)
    )
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"node '{key}' not found")
    return int(found)


def _json_arg(value: str | None, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInput(name, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(name, "must be a JSON object")
    return data


# -- barclamps ------------------------------------------------------------------------------------


@main.group("barclamp")
def barclamp_group() -> None:
    """Barclamps: packages of roles."""


@barclamp_group.command("load")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@pass_cli
def barclamp_load(cli: CliContext, directory: Path | None) -> None:
    """Validate and load the barclamps in DIRECTORY (the core barclamp when omitted)."""
    with cli.db.session() as session:
        specs = barclamps.load(session, directory or barclamps.CORE_DIR, actor="cli")
    for spec in specs:
        click.echo(f"barclamp {spec.name} {spec.version}: {len(spec.roles)} roles loaded")


@barclamp_group.command("roles")
@json_option
@pass_cli
def barclamp_roles(cli: CliContext, as_json: bool) -> None:
    """List roles with their jig, cohort and requirements."""
    with cli.db.read_session() as session:
        rows = [
            {
                "name": r.name,
                "jig": r.jig,
                "cohort": r.cohort,
                "requires": ",".join(r.requires or []),
                "flags": ",".join(f for f in barclamps.FLAGS if getattr(r, f)),
            }
            for r in session.scalars(select(Role).order_by(Role.cohort, Role.name))
        ]
    output(rows, ["name", "jig", "cohort", "requires", "flags"], as_json)


# -- deployments ----------------------------------------------------------------------------------


@main.group("deployment")
def deployment_group() -> None:
    """Deployments: roles bound to nodes, committed or proposed."""


@deployment_group.command("create")
@click.argument("name")
@click.option("--description", default="")
@pass_cli
def deployment_create(cli: CliContext, name: str, description: str) -> None:
    with cli.db.session() as session:
        deployments.create(session, name, description=description, actor="cli")
    click.echo(f"deployment {name} created (proposed)")


@deployment_group.command("add-role")
@click.argument("name")
@click.argument("role")
@click.option("--data", default=None, help="Deployment-wide input values as a JSON object.")
@pass_cli
def deployment_add_role(cli: CliContext, name: str, role: str, data: str | None) -> None:
    with cli.db.session() as session:
        deployment = deployments.get_deployment(session, name)
        deployments.add_role(session, deployment, role, data=_json_arg(data, "data"), actor="cli")
    click.echo(f"role {role} bound to deployment {name}")


@deployment_group.command("add-node")
@click.argument("name")
@click.argument("nodes", nargs=-1, required=True)
@click.option("--role", "roles", multiple=True, required=True, help="Role to bind (repeatable).")
@pass_cli
def deployment_add_node(cli: CliContext, name: str, nodes: tuple[str, ...], roles: tuple[str, ...]) -> None:
    with cli.db.session() as session:
        deployment = deployments.get_deployment(session, name)
        ids = [_node_id(session, n) for n in nodes]
        created = deployments.add_nodes(session, deployment, ids, list(roles), actor="cli")
    click.echo(f"{len(created)} node-roles bound in {name}")


@deployment_group.command("commit")
@click.argument("name")
@pass_cli
def deployment_commit(cli: CliContext, name: str) -> None:
    with cli.db.session() as session:
        deployments.commit(session, deployments.get_deployment(session, name), actor="cli")
    click.echo(f"deployment {name} committed")


@deployment_group.command("propose")
@click.argument("name")
@pass_cli
def deployment_propose(cli: CliContext, name: str) -> None:
    with cli.db.session() as session:
        deployments.propose(session, deployments.get_deployment(session, name), actor="cli")
    click.echo(f"deployment {name} proposed: edits allowed, nothing new starts")


# OpenCrowbar called taking a committed deployment back "recall"
deployment_group.add_command(deployment_propose, "recall")


@deployment_group.command("show")
@click.argument("name")
@json_option
@pass_cli
def deployment_show(cli: CliContext, name: str, as_json: bool) -> None:
    """State counts, or with --json the role graph (nodes + edges)."""
    with cli.db.read_session() as session:
        deployment = deployments.get_deployment(session, name)
        if as_json:
            click.echo(json.dumps(deployment_graph(session, deployment.id), indent=2, default=str))
            return
        counts = dict(
            session.execute(
                select(NodeRole.state, func.count())
                .where(NodeRole.deployment_id == deployment.id)
                .group_by(NodeRole.state)
            ).all()
        )
    click.echo(f"deployment {deployment.name}: {deployment.state}")
    for state, count in sorted(counts.items()):
        click.echo(f"  {state:<10} {count}")


# -- node-roles -----------------------------------------------------------------------------------


@main.group("noderole")
def noderole_group() -> None:
    """Node-roles: list, show (inputs, outputs, log), retry, replay."""


@noderole_group.command("list")
@click.option("--node", default=None)
@click.option("--state", default=None)
@click.option("--deployment", default=None)
@json_option
@pass_cli
def noderole_list(
    cli: CliContext, node: str | None, state: str | None, deployment: str | None, as_json: bool
) -> None:
    with cli.db.read_session() as session:
        query = (
            select(
                NodeRole.id, Node.name, Role.name, NodeRole.state, NodeRole.run_count, NodeRole.deployment_id
            )
            .join(Node, Node.id == NodeRole.node_id)
            .join(Role, Role.id == NodeRole.role_id)
            .order_by(NodeRole.cohort, NodeRole.id)
        )
        if node:
            query = query.where(NodeRole.node_id == _node_id(session, node))
        if state:
            query = query.where(NodeRole.state == state)
        if deployment:
            query = query.where(NodeRole.deployment_id == deployments.get_deployment(session, deployment).id)
        rows = [
            {"id": i, "node": n, "role": r, "state": s, "runs": c, "deployment": d}
            for i, n, r, s, c, d in session.execute(query)
        ]
    output(rows, ["id", "node", "role", "state", "runs", "deployment"], as_json)


@noderole_group.command("show")
@click.argument("node_role_id", type=int)
@json_option
@pass_cli
def noderole_show(cli: CliContext, node_role_id: int, as_json: bool) -> None:
    with cli.db.read_session() as session:
        body = runlog.show(session, node_role_id)
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    for key in ("id", "node", "role", "deployment", "state", "run_count", "attempts", "parents", "children"):
        click.echo(f"{key:<11} {body[key]}")
    click.echo(f"wall        {json.dumps(body['wall'])}")
    for run in body.get("runs", []):
        click.echo(
            f"run {run['id']} {run['status']} inputs={json.dumps(run['inputs'])} outputs={json.dumps(run['outputs'])}"
        )
    if body["runlog"]:
        click.echo("--- log\n" + body["runlog"])


@noderole_group.command("why")
@click.argument("node_role_id", type=int)
@json_option
@pass_cli
def noderole_why(cli: CliContext, node_role_id: int, as_json: bool) -> None:
    """Why a node-role is not running, down to the node-role that needs attention."""
    with cli.db.read_session() as session:
        body = explain.why(session, node_role_id)
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    _echo_why(body, 0)


def _echo_why(body: dict[str, Any], depth: int) -> None:
    pad = "  " * depth
    click.echo(f"{pad}{body['role']} on {body['node']} (#{body['id']}): {body['state']}")
    for reason in body["reasons"]:
        click.echo(f"{pad}  - {reason['message']}")
        if reason.get("parent"):
            _echo_why(reason["parent"], depth + 2)


@noderole_group.command("retry")
@click.argument("node_role_id", type=int)
@pass_cli
def noderole_retry(cli: CliContext, node_role_id: int) -> None:
    with cli.db.session() as session:
        state = deployments.retry(session, node_role_id, actor="cli")
    click.echo(f"node-role {node_role_id}: {state}")


@noderole_group.command("replay")
@click.argument("node_role_id", type=int)
@click.option("--run", "run_id", type=int, default=None, help="Replay this run (default: the last).")
@json_option
@pass_cli
def noderole_replay(cli: CliContext, node_role_id: int, run_id: int | None, as_json: bool) -> None:
    """Re-run a recorded run with exactly its recorded inputs; changes no state."""
    body = runlog.replay(cli.db, node_role_id, run_id=run_id, actor="cli")
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    click.echo(f"replay of run {body['replay_of']}: {body['status']} outputs={json.dumps(body['outputs'])}")
    click.echo("same outputs as recorded" if body["same_outputs"] else "outputs DIFFER from the recorded run")
    if body["log"]:
        click.echo(body["log"])


# -- the annealer ---------------------------------------------------------------------------------


@main.group("annealer")
def annealer_group() -> None:
    """The annealer service."""


@annealer_group.command("run")
@click.option("--workers", type=int, default=None, help="Jig worker threads (default: settings).")
@click.option("--until-idle", is_flag=True, help="Exit once nothing is left to run.")
@pass_cli
def annealer_run(cli: CliContext, workers: int | None, until_idle: bool) -> None:
    """Claim and run node-roles until stopped (SIGTERM/SIGINT finish running jigs first)."""
    from appliance.annealer import service

    if until_idle:
        annealer = service.make_annealer(cli.settings, cli.db, workers=workers)
        try:
            annealer.run_until_idle(timeout=24 * 3600)
        finally:
            annealer.close()
        click.echo(f"annealer idle after {annealer.completed} node-roles")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.serve(cli.settings, cli.db, stop, workers=workers)
