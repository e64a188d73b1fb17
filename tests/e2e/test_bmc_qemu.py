"""A QEMU machine whose BMC is ipmi_sim: Kiln powers it on through IPMI, it netboots into discovery,
Kiln sets its BMC in band through the discovery agent, then controls it out of band and powers it off.

Wiring (LAB.md): ipmi_sim's `startcmd` starts QEMU inside the netboot lab's namespace on power-on and
kills it on power-off; QEMU's ipmi-bmc-extern + isa-ipmi-bt give the guest /dev/ipmi0. The chardev is
a Unix socket (namespace-independent) relayed to ipmi_sim's VM port on the host loopback. ipmi_sim's
LAN side listens on a loopback address of a per-test 127.x.y.0/24 `bmc` network, port 623, which is
the address bmc-configure hands out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance import ipam, nodes
from appliance.bmc.base import BMCTarget
from appliance.bmc.configure import plan_bmc_address, store_bmc_credentials
from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.ipmi import IPMIDriver
from appliance.bmc.power import power_nodes
from appliance.bmc.roles import configure_inband
from appliance.config import Settings
from appliance.models import AgentTask, Network, Node
from discovery_image import build
from tests.bmcsim import SimBMC, free_port
from tests.e2e.netboot_lab import QEMU, NetbootLab
from tests.netns import unique

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.xdist_group("e2e")]

IMAGE_CACHE = Path("/var/tmp/kiln-e2e-discovery")


class UnixRelay:
    """Accepts on a Unix socket and pipes each connection to a TCP port on the host loopback."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.server.close()


@pytest.fixture(scope="module")
def discovery_image() -> build.Image:
    return build.build(IMAGE_CACHE)


def _qemu_pids(marker: str) -> list[int]:
    done = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def _eventually(check: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f}s")
        time.sleep(0.5)


@pytest.fixture
def rig(discovery_image: build.Image, tmp_path: Path) -> Iterator[dict[str, object]]:
    lab = NetbootLab.create(tmp_path / "lab", discovery_image.directory)
    pid = os.getpid()
    bmc_net = f"127.{100 + pid % 100}.{(pid // 100) % 250}"
    marker = f"kilnbmc{pid}vm"
    tap = unique("kb")
    lab.ns.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    lab.ns.run(["ip", "link", "set", tap, "master", "br0"])
    lab.ns.run(["ip", "link", "set", tap, "up"])
    mac = f"52:54:00:b0:{pid % 256:02x}:01"
    serial_port = free_port(socket.SOCK_STREAM)
    relay = UnixRelay(tmp_path / "ipmi.sock", serial_port)
    console = tmp_path / "vm.console.log"
    qemu = " ".join(
        [
            "ip", "netns", "exec", lab.ns.name, QEMU, "-name", marker, "-accel", "tcg", "-m", "512",
            "-smp", "1", "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1",
            "-chardev", f"socket,id=ipmi0,path={relay.path},reconnect=1",
            "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-bt,bmc=bmc0",
        ]
    )  # fmt: skip
    bmc = SimBMC(
        name=f"qemu{pid}",
        port=623,
        directory=tmp_path / "bmc",
        listen=f"{bmc_net}.10",
        vm_startcmd=qemu,
        vm_serial_port=serial_port,
    )
    bmc.write_config()
    bmc.start()
    try:
        yield {"lab": lab, "bmc": bmc, "mac": mac, "marker": marker, "bmc_net": bmc_net, "console": console}
    finally:
        bmc.stop()
        for qemu_pid in _qemu_pids(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(qemu_pid, signal.SIGKILL)
        relay.close()
        lab.close()
        shutil.rmtree(tmp_path / "bmc", ignore_errors=True)


def test_kiln_powers_on_a_vm_configures_its_bmc_in_band_and_powers_it_off(
    rig: dict[str, object], settings: Settings
) -> None:
    lab: NetbootLab = rig["lab"]  # type: ignore[assignment]
    bmc: SimBMC = rig["bmc"]  # type: ignore[assignment]
    marker, bmc_net = str(rig["marker"]), str(rig["bmc_net"])
    db = lab.db
    # the operator registered the machine with its MAC and the BMC's factory account
    with db.session() as session:
        net = Network(name="bmc", cidr=f"{bmc_net}.0/24", category="bmc")
        session.add(net)
        session.flush()
        ipam.make_range(session, net, "bmcs", "bmc", f"{bmc_net}.10", f"{bmc_net}.20")
        node = nodes.create_node(session, "vm-bmc1", macs=[str(rig["mac"])])
        set_node_bmc(session, settings, node, address=bmc.listen, username="admin", password=bmc.password)
        node_id = node.id

    (on,) = power_nodes(db, settings, [node_id], "on")
    assert on.ok, on.error
    _eventually(lambda: bool(_qemu_pids(marker)), "QEMU started by the BMC's power-on", 20)

    def discovered() -> bool:
        with db.read_session() as session:
            found = session.get(Node, node_id)
            return found is not None and bool((found.inventory or {}).get("bmc", {}).get("present"))

    try:
        _eventually(discovered, "discovery with an in-band BMC", 180)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{Path(str(rig['console'])).read_text(errors='replace')[-3000:]}"
        ) from None

    # bmc-configure, in band: the agent sets address and user through /dev/ipmi0
    with db.session() as session:
        found = session.get(Node, node_id)
        assert found is not None
        plan = plan_bmc_address(session, found, "bmc")
    assert plan.address == f"{bmc_net}.10"
    target = configure_inband(db, node_id, plan, "kiln", timeout=120)
    with db.session() as session:
        found = session.get(Node, node_id)
        assert found is not None
        store_bmc_credentials(session, settings, found, target)
        task = session.scalars(select(AgentTask).where(AgentTask.node_id == node_id)).all()[-1]
        assert task.state == "ok" and target.password not in task.payload["script"]
    as_kiln = SimBMC(name="k", port=623, directory=bmc.directory, listen=bmc.listen, username="kiln",
                     password=target.password)  # fmt: skip
    printed = as_kiln.ipmitool("lan", "print", "1")
    assert f"IP Address              : {plan.address}" in printed and "Static Address" in printed
    assert "Chassis Power is on" in as_kiln.ipmitool("chassis", "power", "status")
    # the factory account's slot now holds the kiln user: the default credentials are gone
    with pytest.raises(RuntimeError):
        bmc.ipmitool("chassis", "power", "status")

    # out of band with the new credentials (ipmi_sim driving a VM through startcmd keeps no boot
    # parameters, so this reads instead of setting the boot device), then power-off ends the VM
    driver = IPMIDriver(BMCTarget.parse(plan.address, "kiln", target.password))
    assert driver.power_state() == "on"
    assert driver.get_lan().address == plan.address
    driver.close()
    (off,) = power_nodes(db, settings, [node_id], "off")
    assert off.ok, off.error
    _eventually(lambda: not _qemu_pids(marker), "QEMU gone after power-off", 20)
    # ipmi_sim notices its VM's exit a moment after the process is gone
    _eventually(
        lambda: power_nodes(db, settings, [node_id], "status")[0].state == "off", "BMC reports off", 20
    )
