"""`kiln node set` (alive / available / target role) and `kiln node redeploy`: the same functions as the API and UI."""

from __future__ import annotations

from typing import Any

import click

from appliance import nodes
from appliance.annealer import node_ops
from appliance.cli.base import CliContext, json_option, output, pass_cli
from appliance.cli.nodes import _find, node_group, node_row


@node_group.command("set")
@click.argument("node")
@click.option("--alive/--not-alive", default=None, help="Reachable: the annealer runs its node-roles.")
@click.option(
    "--available/--not-available",
    default=None,
    help="In Kiln's hands: off parks the node without deleting it.",
)
@click.option("--target-role", default=None, help="Anneal the node only up to this role and its parents.")
@click.option("--no-target-role", is_flag=True, help="Clear the target role: every node-role may run.")
@json_option
@pass_cli
def node_set(
    cli: CliContext,
    node: str,
    alive: bool | None,
    available: bool | None,
    target_role: str | None,
    no_target_role: bool,
    as_json: bool,
) -> None:
    """Set a node's alive / available flags and target role (node by id, name or MAC)."""
    changes: dict[str, Any] = {k: v for k, v in (("alive", alive), ("available", available)) if v is not None}
    if target_role is not None and no_target_role:
        raise click.UsageError("--target-role and --no-target-role exclude each other")
    if not changes and target_role is None and not no_target_role:
        raise click.UsageError("give --alive/--not-alive, --available/--not-available or --[no-]target-role")
    with cli.db.session() as s:
        found = _find(s, node)
        if changes:
            nodes.update_node(s, found.id, changes, actor="cli")
        if target_role is not None or no_target_role:
            node_ops.set_target_role(s, found.id, target_role, actor="cli")
            changes["target_role"] = target_role
        row = node_row(found)
    if as_json:
        output(row, [], True)
    else:
        flags = ", ".join(
            f"{k} {v or 'none'}" if k == "target_role" else f"{k} {'yes' if v else 'no'}"
            for k, v in changes.items()
        )
        click.echo(f"node {row['name']}: {flags}")


@node_group.command("redeploy")
@click.argument("node")
@json_option
@pass_cli
def node_redeploy(cli: CliContext, node: str, as_json: bool) -> None:
    """Re-install a node: node-roles back to proposed (re-committed in committed deployments), bootenv
    discovery, one-time network boot and power cycle through its BMC.

    Without a BMC the reset is still done and the output says power was not cycled.
    """
    with cli.db.read_session() as s:
        node_id = _find(s, node).id
    result = node_ops.redeploy(cli.db, cli.settings, node_id, actor="cli")
    if as_json:
        output(result.as_dict(), [], True)
    else:
        click.echo(result.summary())
