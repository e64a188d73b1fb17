"""`kiln dhcp`: what the DHCP server has handed out (the server itself runs under `kiln serve`)."""

from __future__ import annotations

import datetime as dt

import click
from sqlalchemy import select

from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.models import Lease, Network, utcnow


def _state(lease: Lease, now: dt.datetime) -> str:
    # the server does not rewrite rows when a lease runs out; its end time says it has
    ends = lease.ends_at if lease.ends_at.tzinfo else lease.ends_at.replace(tzinfo=dt.UTC)
    return "expired" if lease.state == "active" and ends <= now else lease.state


@main.group("dhcp")
def dhcp_group() -> None:
    """DHCP leases (the server runs as `kiln serve --only dhcp`)."""


@dhcp_group.command("leases")
@click.option("--network", "network_name", default=None, help="Only this network.")
@click.option("--all", "show_all", is_flag=True, help="Also released, declined and expired leases.")
@json_option
@pass_cli
def dhcp_leases(cli: CliContext, network_name: str | None, show_all: bool, as_json: bool) -> None:
    """List DHCP leases, newest first."""
    query = (
        select(Lease, Network.name)
        .join(Network, Network.id == Lease.network_id)
        .order_by(Lease.starts_at.desc(), Lease.id.desc())
    )
    if network_name:
        query = query.where(Network.name == network_name)
    now = utcnow()
    if not show_all:
        query = query.where(Lease.state == "active", Lease.ends_at > now)
    with cli.db.read_session() as session:
        rows = [
            {
                "network": name,
                "address": lease.address,
                "mac": lease.mac,
                "state": _state(lease, now),
                "hostname": lease.hostname or "",
                "ends_at": lease.ends_at.isoformat(timespec="seconds"),
                "relay": lease.relay or "",
                "arch": "" if lease.client_arch is None else lease.client_arch,
                "ipxe": lease.ipxe,
            }
            for lease, name in session.execute(query)
        ]
    output(
        rows, ["network", "address", "mac", "state", "hostname", "ends_at", "relay", "arch", "ipxe"], as_json
    )
