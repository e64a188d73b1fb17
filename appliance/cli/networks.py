"""`kiln network`: networks, their ranges and address allocation (through appliance.networks / ipam)."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import ipam, networks, nodes
from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.errors import NotFound
from appliance.models import Allocation, Network, Range

NETWORK_COLUMNS = ["id", "name", "cidr", "category", "conduit", "vlan", "gateway", "ranges"]
RANGE_COLUMNS = ["id", "name", "kind", "first", "last", "size", "used"]


def _network(session: Session, ref: str) -> Network:
    return (
        networks.get_network(session, int(ref)) if ref.isdigit() else networks.network_by_name(session, ref)
    )


def _range(session: Session, network: Network, ref: str) -> Range:
    query = select(Range).where(Range.network_id == network.id)
    query = query.where(Range.id == int(ref)) if ref.isdigit() else query.where(Range.name == ref)
    rng = session.scalar(query)
    if rng is None:
        raise NotFound(f"network '{network.name}' has no range '{ref}'", field="range")
    return rng


def _network_row(session: Session, net: Network) -> dict[str, Any]:
    ranges = session.scalars(select(Range).where(Range.network_id == net.id).order_by(Range.id)).all()
    return {
        "id": net.id,
        "name": net.name,
        "cidr": net.cidr,
        "category": net.category,
        "conduit": net.conduit,
        "vlan": net.vlan,
        "gateway": net.gateway,
        "dns_servers": ",".join(net.dns_servers or []),
        "ranges": ",".join(r.name for r in ranges),
    }


def _range_row(session: Session, rng: Range) -> dict[str, Any]:
    use = ipam.usage(session, rng)
    return {
        "id": rng.id,
        "name": rng.name,
        "kind": rng.kind,
        "first": rng.first,
        "last": rng.last,
        "size": use.size,
        "used": use.used,
    }


@main.group("network")
def network_group() -> None:
    """Networks, ranges and address allocations."""


@network_group.command("list")
@json_option
@pass_cli
def network_list(cli: CliContext, as_json: bool) -> None:
    """List networks."""
    with cli.db.read_session() as s:
        rows = [_network_row(s, n) for n in s.scalars(select(Network).order_by(Network.id))]
    output(rows, NETWORK_COLUMNS, as_json)


@network_group.command("show")
@click.argument("network")
@json_option
@pass_cli
def network_show(cli: CliContext, network: str, as_json: bool) -> None:
    """Show a network (by id or name) with its ranges and their usage."""
    with cli.db.read_session() as s:
        net = _network(s, network)
        row = _network_row(s, net)
        ranges = [
            _range_row(s, r)
            for r in s.scalars(select(Range).where(Range.network_id == net.id).order_by(Range.id))
        ]
    if as_json:
        output({**row, "ranges": ranges}, [], True)
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        if key != "ranges":
            click.echo(f"{key.ljust(width)}  {'' if value is None else value}")
    click.echo("")
    output(ranges, RANGE_COLUMNS, False)


@network_group.command("add")
@click.argument("name")
@click.argument("cidr")
@click.option("--gateway", default=None)
@click.option("--dns", "dns_servers", multiple=True, help="A DNS server (repeat for several).")
@click.option("--category", default=None, help="admin, bmc, storage, public...")
@click.option("--conduit", default=None, help="Logical interface, e.g. 1g0.")
@click.option("--vlan", type=int, default=None)
@click.option("--domain", default=None)
@click.option("--interface", default=None, help="Interface Kiln's DHCP serves it on.")
@json_option
@pass_cli
def network_add(
    cli: CliContext,
    name: str,
    cidr: str,
    gateway: str | None,
    dns_servers: tuple[str, ...],
    category: str | None,
    conduit: str | None,
    vlan: int | None,
    domain: str | None,
    interface: str | None,
    as_json: bool,
) -> None:
    """Create a network."""
    with cli.db.session() as s:
        net = networks.create_network(
            s,
            name,
            cidr,
            actor="cli",
            gateway=gateway,
            dns_servers=list(dns_servers) or None,
            category=category,
            conduit=conduit,
            vlan=vlan,
            domain=domain,
            interface=interface,
        )
        row = _network_row(s, net)
    if as_json:
        output(row, [], True)
    else:
        click.echo(f"network {name} {row['cidr']} created (id {row['id']})")


@network_group.command("delete")
@click.argument("network")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_cli
def network_delete(cli: CliContext, network: str, yes: bool) -> None:
    """Delete a network with its ranges and allocations."""
    with cli.db.session() as s:
        net = _network(s, network)
        if not yes:
            click.confirm(f"delete network {net.name} and its ranges and allocations?", abort=True)
        name = net.name
        networks.delete_network(s, net.id, actor="cli")
    click.echo(f"network {name} deleted")


@network_group.group("range")
def range_group() -> None:
    """Ranges of a network."""


@range_group.command("add")
@click.argument("network")
@click.argument("name")
@click.argument("kind", type=click.Choice(["dhcp", "host", "bmc", "dynamic"]))
@click.argument("first")
@click.argument("last")
@json_option
@pass_cli
def range_add(
    cli: CliContext, network: str, name: str, kind: str, first: str, last: str, as_json: bool
) -> None:
    """Add a range FIRST-LAST of KIND to NETWORK."""
    with cli.db.session() as s:
        net = _network(s, network)
        rng = networks.create_range(s, net.id, name, kind, first, last, actor="cli")
        row = _range_row(s, rng)
    if as_json:
        output(row, [], True)
    else:
        click.echo(f"range {net.name}/{name} {first}-{last} created (id {row['id']})")


@network_group.command("allocate")
@click.argument("network")
@click.argument("range_name", metavar="RANGE")
@click.option("--node", "node_ref", default=None, help="Node (id or name) the address is for.")
@click.option("--mac", default=None)
@click.option("--hostname", default=None)
@click.option("--address", default=None, help="A specific free address (default: the lowest free).")
@json_option
@pass_cli
def network_allocate(
    cli: CliContext,
    network: str,
    range_name: str,
    node_ref: str | None,
    mac: str | None,
    hostname: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    """Allocate an address from RANGE of NETWORK."""
    with cli.db.session() as s:
        rng = _range(s, _network(s, network), range_name)
        node_id = None
        if node_ref is not None:
            node = nodes.get_node(s, int(node_ref)) if node_ref.isdigit() else nodes.node_by_name(s, node_ref)
            node_id = node.id
        allocation: Allocation = ipam.allocate(
            s,
            rng.id,
            node_id=node_id,
            mac=nodes.normalize_mac(mac) if mac else None,
            hostname=hostname,
            address=address,
            actor="cli",
        )
        row = {"id": allocation.id, "address": allocation.address, "range": rng.name, "node_id": node_id}
    if as_json:
        output(row, [], True)
    else:
        click.echo(allocation.address)
