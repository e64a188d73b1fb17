"""What a fresh lab needs in its database: the admin and BMC networks with their ranges, an admin user.

Idempotent: a lab restarted on the same state dir keeps its networks, nodes and admin user.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance import auth, networks
from appliance.db import Database
from appliance.lab.network import LabNetwork
from appliance.models import Network, User

ADMIN_NETWORK = "lab-admin"
BMC_NETWORK = "lab-bmc"
ADMIN_USER = "admin"


@dataclass(frozen=True)
class LabCredentials:
    username: str
    password: str
    created: bool


RangeSpec = tuple[str, str, str, str]  # name, kind, first, last


@dataclass(frozen=True)
class LabPlan:
    """The lower half of the lab subnet for hosts, the upper half for discovery (dynamic); the BMC
    network is the next subnet of the same size (10.77.1.0/24 after 10.77.0.0/24)."""

    admin_ranges: list[RangeSpec]
    bmc_cidr: str
    bmc_ranges: list[RangeSpec]

    @classmethod
    def for_network(cls, net: LabNetwork) -> LabPlan:
        admin = net.network
        base, size = admin.network_address, admin.num_addresses
        bmc = ipaddress.IPv4Network((int(base) + size, admin.prefixlen))
        return cls(
            admin_ranges=[
                ("hosts", "host", str(base + min(10, size // 4)), str(base + size // 2 - 1)),
                ("discovery", "dynamic", str(base + size // 2), str(admin.broadcast_address - 1)),
            ],
            bmc_cidr=str(bmc),
            bmc_ranges=[
                ("bmcs", "bmc", str(bmc.network_address + min(10, size // 4)), str(bmc.broadcast_address - 1))
            ],
        )


def seed_networks(db: Database, net: LabNetwork, domain: str) -> None:
    plan = LabPlan.for_network(net)
    specs: list[tuple[str, dict[str, Any], list[RangeSpec]]] = [
        (
            ADMIN_NETWORK,
            {
                "cidr": net.subnet,
                "category": "admin",
                "dns_servers": [net.kiln_address],
                "domain": domain,
                "interface": net.bridge,
            },
            plan.admin_ranges,
        ),
        (BMC_NETWORK, {"cidr": plan.bmc_cidr, "category": "bmc", "conduit": "bmc"}, plan.bmc_ranges),
    ]
    with db.session() as session:
        for name, spec, ranges in specs:
            if session.scalar(select(Network).where(Network.name == name)) is not None:
                continue
            network = networks.create_network(session, name, actor="lab", **spec)
            for range_name, kind, first, last in ranges:
                networks.create_range(session, network.id, range_name, kind, first, last, actor="lab")


def ensure_admin(db: Database, state_dir: Path) -> LabCredentials:
    """The first admin; its random password is kept (0600) in the state dir to be shown at every start."""
    saved = state_dir / "admin-password"
    with db.session() as session:
        exists = session.scalar(select(User).where(User.username == ADMIN_USER)) is not None
        if not exists:
            password = secrets.token_urlsafe(12)
            auth.create_user(session, ADMIN_USER, password, "admin", actor="lab")
    if not exists:
        saved.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        return LabCredentials(ADMIN_USER, password, created=True)
    known = saved.read_text().strip() if saved.exists() else "(set before; not kept)"
    return LabCredentials(ADMIN_USER, known, created=False)
