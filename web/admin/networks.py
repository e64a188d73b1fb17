"""Networks and IPAM: networks with their ranges and usage bars (appliance.ipam.usage), and one
network's allocations and DHCP leases. Read-only pages: changes go through the API and CLI."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance import ipam
from appliance.errors import NotFound
from appliance.models import Allocation, Lease, Network, Node, Range
from web.admin.guard import page
from web.admin.rendering import render
from web.context import kiln

bp = Blueprint("networks", __name__)

ROWS_SHOWN = 500


def _ranges(session: Session, network_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in network_ids}
    for rng in session.scalars(
        select(Range).where(Range.network_id.in_(network_ids)).order_by(Range.network_id, Range.first_int)
    ):
        use = ipam.usage(session, rng)
        percent = 100.0 * use.used / use.size if use.size else 0.0
        found[rng.network_id].append({"range": rng, "usage": use, "percent": percent})
    return found


@bp.get("/networks")
@page
def network_list() -> str:
    with kiln().db.read_session() as s:
        networks = list(s.scalars(select(Network).order_by(Network.name)))
        context = {
            "networks": networks,
            "ranges": _ranges(s, [n.id for n in networks]),
            "leases": dict(
                s.execute(
                    select(Lease.network_id, func.count())
                    .where(Lease.state == "active")
                    .group_by(Lease.network_id)
                ).all()
            ),
        }
    context["live_url"] = url_for("admin.networks.network_list", fragment="table")
    return render("admin/networks.html", {"table": "admin/_networks_table.html"}, **context)


@bp.get("/networks/<int:network_id>")
@page
def network_page(network_id: int) -> str:
    with kiln().db.read_session() as s:
        network = s.get(Network, network_id)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        allocations = s.execute(
            select(Allocation, Node.name)
            .outerjoin(Node, Node.id == Allocation.node_id)
            .where(Allocation.network_id == network_id)
            .order_by(Allocation.address_int)
            .limit(ROWS_SHOWN)
        ).all()
        leases = list(
            s.scalars(
                select(Lease)
                .where(Lease.network_id == network_id)
                .order_by(Lease.starts_at.desc())
                .limit(ROWS_SHOWN)
            )
        )
        context = {
            "network": network,
            "ranges": _ranges(s, [network_id])[network_id],
            "allocations": allocations,
            "leases": leases,
            "rows_shown": ROWS_SHOWN,
        }
    context["live_url"] = url_for("admin.networks.network_page", network_id=network_id, fragment="body")
    return render("admin/network.html", {"body": "admin/_network_body.html"}, **context)
