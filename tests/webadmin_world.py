"""A small rack for the admin page tests (unit and browser): users, nodes with inventory, a network
with ranges, allocations and leases, a barclamp, a deployment with node-roles and runs; and logging a
Flask test client in through the login form."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from appliance import auth, ipam, nodes
from appliance.annealer import deployments
from appliance.db import Database
from appliance.models import Bootenv, Lease, Network, Run, utcnow
from tests.unit.annealer_world import load

PASSWORD = "correct horse battery"

ROLES_YAML = """\
roles:
  - {name: web-base, jig: noop, outputs: {base_done: {schema: {type: boolean}, default: true}}}
  - {name: web-app, jig: noop, requires: [web-base]}
  - {name: web-check, jig: test, jig_data: {sleep: 0.2}, requires: [web-app]}
"""

INVENTORY: dict[str, Any] = {
    "schema": 1,
    "boot_mac": "52:54:00:00:00:01",
    "system": {"manufacturer": "Kiln Labs", "product": "Rack 1U", "serial": "SN-0001", "uuid": None},
    "cpu": {"threads": 16, "sockets": 1, "cores_per_socket": 8, "model": "Test CPU 3000"},
    "memory": {"total_mb": 65536, "dimms": 4},
    "disks": [{"name": "sda", "size_bytes": 480_000_000_000, "model": "SSD-480", "rotational": False}],
    "nics": [
        {
            "name": "eno1",
            "mac": "52:54:00:00:00:01",
            "driver": "virtio_net",
            "link": True,
            "speed_mbps": 10000,
        }
    ],
    "bmc": {"present": False},
}


@dataclass
class World:
    node_ids: list[int] = field(default_factory=list)
    deployment_id: int = 0
    network_id: int = 0
    error_node_role: int = 0


def make_users(db: Database) -> None:
    with db.session() as s:
        for role in ("admin", "operator", "readonly"):
            auth.create_user(s, role, PASSWORD, role)


def make_world(db: Database, tmp_path: Path, *, nodes_count: int = 3) -> World:
    world = World()
    load(db, tmp_path, ROLES_YAML, name="webbc")
    with db.session() as s:
        have = set(s.scalars(select(Bootenv.name)))
        for name, kind in (("discovery", "discovery"), ("local", "local")):
            if name not in have:
                s.add(Bootenv(name=name, kind=kind, description=f"{name} (test)"))
        for i in range(nodes_count):
            node = nodes.create_node(
                s, f"rack1-n{i}.test", macs=[f"52:54:00:00:00:{i + 1:02x}"], state="discovered"
            )
            node.inventory = INVENTORY
            world.node_ids.append(node.id)
        network = Network(name="admin", cidr="10.20.0.0/24", gateway="10.20.0.1")
        s.add(network)
        s.flush()
        world.network_id = network.id
        host = ipam.make_range(s, network, "hosts", "host", "10.20.0.10", "10.20.0.19")
        ipam.make_range(s, network, "pool", "dhcp", "10.20.0.100", "10.20.0.199")
        s.flush()
        ipam.allocate(s, host.id, node_id=world.node_ids[0])
        s.add(
            Lease(
                network_id=network.id,
                mac="52:54:00:00:00:01",
                address="10.20.0.100",
                address_int=int.from_bytes(bytes([10, 20, 0, 100]), "big"),
                ends_at=utcnow() + dt.timedelta(hours=1),
                ipxe=True,
            )
        )
        deployment = deployments.create(s, "web-prod", description="the web tier")
        world.deployment_id = deployment.id
        deployments.add_nodes(s, deployment, world.node_ids[:2], ["web-app"])
    return world


def add_run(db: Database, node_role_id: int, status: str = "ok") -> None:
    with db.session() as s:
        s.add(
            Run(
                node_role_id=node_role_id,
                annealer="test",
                status=status,
                inputs={"answer": 42},
                outputs={"base_done": True},
                log="ran fine\n",
                finished_at=utcnow(),
            )
        )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF field"
    return found.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the CSRF token of the new session."""
    token = csrf_of(client.get("/admin/login").text)
    answer = client.post(
        "/admin/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert answer.status_code == 302, answer.text
    return csrf_of(client.get("/admin/").text)
