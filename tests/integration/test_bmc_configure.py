"""configure_bmc() against a real ipmi_sim: address from the bmc range, a kiln user, verified login."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance import ipam
from appliance.bmc import roles
from appliance.bmc.base import BMCTarget
from appliance.bmc.configure import configure_bmc
from appliance.bmc.credentials import decrypt_password, set_node_bmc
from appliance.bmc.ipmi import IPMIDriver
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import JigError, NotFound
from appliance.jigs import REGISTRY
from appliance.jigs.base import NodeRoleContext
from appliance.models import Allocation, Event, Network, Node
from tests.bmcsim import IPMISimFarm, SimBMC

pytestmark = pytest.mark.xdist_group("bmc_configure")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IPMISimFarm]:
    sims = IPMISimFarm(tmp_path_factory.mktemp("ipmi-cfg")).start(1)
    yield sims
    sims.stop()


def _world(db: Database, settings: Settings, bmc: SimBMC) -> int:
    with db.session() as session:
        network = Network(name="bmc", cidr="10.90.0.0/24", category="bmc", gateway="10.90.0.1")
        session.add(network)
        session.flush()
        ipam.make_range(session, network, "bmcs", "bmc", "10.90.0.10", "10.90.0.20")
        node = Node(name="cfg1.kiln.lab")
        session.add(node)
        session.flush()
        # what discovery left: the factory account, reachable
        set_node_bmc(
            session, settings, node, address=bmc.address, username=bmc.username, password=bmc.password
        )
        return node.id


def test_configure_bmc_sets_address_and_kiln_user_and_stores_them_encrypted(
    farm: IPMISimFarm, sqlite_db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = farm.bmcs[0]
    node_id = _world(sqlite_db, settings, bmc)
    factory = IPMIDriver(BMCTarget.parse(bmc.address, bmc.username, bmc.password))
    with sqlite_db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        outputs = configure_bmc(session, node, settings, factory, reachable_at=bmc.address)
    factory.close()
    assert outputs == {"bmc_address": "10.90.0.10", "bmc_username": "kiln", "bmc_driver": "ipmi"}

    printed = bmc.ipmitool("lan", "print", "1")
    assert "IP Address              : 10.90.0.10" in printed
    assert "Subnet Mask             : 255.255.255.0" in printed
    assert "Default Gateway IP      : 10.90.0.1" in printed
    with sqlite_db.read_session() as session:
        node = session.get(Node, node_id)
        assert node is not None and node.bmc_password_enc is not None
        assert (node.bmc_username, node.bmc_driver, node.bmc_address) == ("kiln", "ipmi", bmc.address)
        password = decrypt_password(settings, node.bmc_password_enc)
        allocation = session.scalar(select(Allocation).where(Allocation.node_id == node_id))
        assert allocation is not None and (allocation.address, allocation.purpose) == ("10.90.0.10", "bmc")
        texts = [repr(e.data) + e.message for e in session.scalars(select(Event))]
        weak = session.scalars(select(Event).where(Event.action == "node.bmc.weak")).all()
        assert len(weak) == 1 and "cipher suite 0" in weak[0].message  # ipmi_sim offers it
    # the stored password is the BMC's: the real client logs in with it
    as_kiln = SimBMC(name="kiln", port=bmc.port, directory=bmc.directory, username="kiln", password=password)
    assert "Chassis Power" in as_kiln.ipmitool("chassis", "power", "status")
    assert len(password) == 16
    assert password not in caplog.text and not any(password in t for t in texts)

    # run again (re-annealing): same address, a fresh password, the old one no longer works
    with sqlite_db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        driver = IPMIDriver(BMCTarget.parse(bmc.address, "kiln", password))
        assert (
            configure_bmc(session, node, settings, driver, reachable_at=bmc.address)["bmc_address"]
            == "10.90.0.10"
        )
        driver.close()
        assert node.bmc_password_enc is not None
        rotated = decrypt_password(settings, node.bmc_password_enc)
    assert rotated != password
    with pytest.raises(RuntimeError):
        as_kiln.ipmitool("chassis", "power", "status")
    assert "Chassis Power" in as_kiln.ipmitool("chassis", "power", "status", password=rotated)


def test_configure_bmc_without_a_bmc_network_says_what_to_create(
    farm: IPMISimFarm, sqlite_db: Database, settings: Settings
) -> None:
    bmc = farm.bmcs[0]
    with sqlite_db.session() as session:
        node = Node(name="cfg2.kiln.lab")
        session.add(node)
        session.flush()
        with pytest.raises(NotFound, match="no network 'bmc'"):
            configure_bmc(session, node, settings, IPMIDriver(BMCTarget.parse(bmc.address, "a", "b")))


def test_bmc_configure_role_moves_the_bmc_to_its_bmc_network_address(
    tmp_path: Path, sqlite_db: Database, settings: Settings
) -> None:
    # the BMC listens on 127.0.0.10, the first address of the test's bmc range: the role sets that
    # address and its "log in at the new address" check reaches the same simulated BMC
    sims = IPMISimFarm(tmp_path / "ipmi")
    try:
        bmc = sims.add(listen="127.0.0.10")
        with sqlite_db.session() as session:
            network = Network(name="lab-bmc", cidr="127.0.0.0/24", category="bmc")
            session.add(network)
            session.flush()
            ipam.make_range(session, network, "bmcs", "bmc", "127.0.0.10", "127.0.0.20")
            node = Node(name="role1.kiln.lab")
            session.add(node)
            session.flush()
            set_node_bmc(
                session, settings, node, address=bmc.address, username="admin", password=bmc.password
            )
            node_id = node.id
        # through the jig, as the annealer runs the core barclamp's roles
        roles.register_bmc_operations(sqlite_db, settings)
        jig = REGISTRY["bmc"]
        discover = NodeRoleContext(
            id=1, node_id=node_id, node_name="role1.kiln.lab", role="bmc-discover", deployment_id=1,
            jig_data={"operation": "discover"},
        )  # fmt: skip
        configure = replace(discover, role="bmc-configure", jig_data={"operation": "configure"})
        assert jig.run(discover, {}) == {"bmc_present": True, "bmc_driver": "ipmi"}
        outputs = jig.run(configure, {"bmc_network": "lab-bmc", "bmc_username": "kiln"})
        assert outputs == {"bmc_address": "127.0.0.10"}
        assert "IP Address              : 127.0.0.10" in bmc.ipmitool("lan", "print", "1")
        with sqlite_db.read_session() as session:
            node = session.get(Node, node_id)
            assert node is not None and node.bmc_password_enc is not None
            assert (node.bmc_address, node.bmc_username) == (f"127.0.0.10:{bmc.port}", "kiln")
            password = decrypt_password(settings, node.bmc_password_enc)
        done = subprocess.run(
            ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.10", "-p", str(bmc.port),
             "-U", "kiln", "-P", password, "chassis", "power", "status"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        sims.stop()


def test_bmc_configure_role_without_any_bmc_fails_clearly(sqlite_db: Database, settings: Settings) -> None:
    with sqlite_db.session() as session:
        network = Network(name="bmc", cidr="10.91.0.0/24", category="bmc")
        session.add(network)
        session.flush()
        ipam.make_range(session, network, "bmcs", "bmc", "10.91.0.10", "10.91.0.20")
        node = Node(name="nobmc.kiln.lab", inventory={"bmc": {"present": False}})
        session.add(node)
        session.flush()
        node_id = node.id
    ctx = NodeRoleContext(
        id=2, node_id=node_id, node_name="nobmc.kiln.lab", role="bmc-configure", deployment_id=1
    )
    assert roles.discover(sqlite_db, settings, ctx, {}) == {"bmc_present": False, "bmc_driver": ""}
    with pytest.raises(JigError, match="kiln bmc set") as caught:
        roles.configure(sqlite_db, settings, ctx, {})
    assert not caught.value.retryable
