"""`kiln node`: list, show, add and delete nodes (through appliance.nodes, not the HTTP API)."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select

from appliance import nodes
from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.models import Node, NodeMac

LIST_COLUMNS = ["id", "name", "state", "bootenv", "macs", "alive", "available"]


def node_row(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "name": node.name,
        "description": node.description,
        "state": node.state,
        "system_uuid": node.system_uuid,
        "bootenv": node.bootenv,
        "alive": node.alive,
        "available": node.available,
        "bmc_address": node.bmc_address,
        "power_state": node.power_state,
        "macs": ",".join(m.mac for m in node.macs),
        "version": node.version,
    }


def _find(session: Any, ref: str) -> Node:
    """A node by id, by name, or by one of its MACs."""
    if ref.isdigit():
        return nodes.get_node(session, int(ref))
    if ":" in ref or ("-" in ref and len(ref) == 17):
        found = nodes.node_by_mac(session, ref)
        if found is not None:
            return found
    return nodes.node_by_name(session, ref)


@main.group("node")
def node_group() -> None:
    """Nodes: the machines Kiln manages."""


@node_group.command("list")
@click.option("--state", default=None, help="Only nodes in this state.")
@click.option("--mac", default=None, help="Only the node with this MAC.")
@json_option
@pass_cli
def node_list(cli: CliContext, state: str | None, mac: str | None, as_json: bool) -> None:
    """List nodes."""
    query = select(Node).order_by(Node.id)
    if state:
        query = query.where(Node.state == state)
    if mac:
        query = query.where(
            Node.id.in_(select(NodeMac.node_id).where(NodeMac.mac == nodes.normalize_mac(mac)))
        )
    with cli.db.read_session() as s:
        rows = [node_row(n) for n in s.scalars(query)]
    output(rows, LIST_COLUMNS, as_json)


@node_group.command("show")
@click.argument("node")
@json_option
@pass_cli
def node_show(cli: CliContext, node: str, as_json: bool) -> None:
    """Show one node (by id, name or MAC)."""
    with cli.db.read_session() as s:
        row = node_row(_find(s, node))
    if as_json:
        output(row, [], as_json)
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}")


@node_group.command("add")
@click.argument("name")
@click.option("--mac", "macs", multiple=True, help="A MAC of the node (repeat for several).")
@click.option("--description", default=None)
@click.option("--bootenv", default=None, help="What it boots next (default: discovery).")
@click.option("--system-uuid", default=None, help="DMI system UUID.")
@json_option
@pass_cli
def node_add(
    cli: CliContext,
    name: str,
    macs: tuple[str, ...],
    description: str | None,
    bootenv: str | None,
    system_uuid: str | None,
    as_json: bool,
) -> None:
    """Register a node."""
    with cli.db.session() as s:
        node = nodes.create_node(
            s,
            name,
            macs=list(macs),
            actor="cli",
            description=description,
            bootenv=bootenv,
            system_uuid=system_uuid,
        )
        row = node_row(node)
    if as_json:
        output(row, [], True)
    else:
        click.echo(f"node {row['name']} created (id {row['id']})")


@node_group.command("delete")
@click.argument("node")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_cli
def node_delete(cli: CliContext, node: str, yes: bool) -> None:
    """Delete a node (by id, name or MAC), with its MACs and allocations."""
    with cli.db.session() as s:
        found = _find(s, node)
        if not yes:
            click.confirm(f"delete node {found.name}?", abort=True)
        name = found.name
        nodes.delete_node(s, found.id, actor="cli")
    click.echo(f"node {name} deleted")
