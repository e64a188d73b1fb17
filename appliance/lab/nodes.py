"""Lab nodes: QEMU machines whose only NIC is a tap on the lab bridge, booting from the network first.

They behave like blank rack servers: firmware PXE (QEMU's iPXE ROM from Debian's ipxe-qemu) asks
Kiln's DHCP for an address and a boot file, then runs what Kiln serves (the discovery image first).
Each has an empty sparse disk for an installer to write to. KVM is not used: on the machines this was
built on, iPXE triple-faults under KVM (see LAB.md), and TCG boots the discovery image in seconds.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from appliance.lab.network import LabError, LabNetwork, ip

log = logging.getLogger(__name__)

DISK_BYTES = 20 * 1024**3


@dataclass
class LabNode:
    name: str
    mac: str
    tap: str
    disk: Path
    console: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class LabNodes:
    net: LabNetwork
    directory: Path
    memory_mib: int = 1024
    nodes: list[LabNode] = field(default_factory=list)

    def node_spec(self, index: int) -> LabNode:
        # MACs in QEMU's 52:54:00 prefix, numbered so a lab's nodes are easy to recognise in leases
        octet = self.net.network.network_address.packed[1]
        return LabNode(
            name=f"lab-node{index}",
            mac=f"52:54:00:{octet:02x}:00:{index:02x}",
            tap=f"{self.net.namespace[:9]}t{index}"[:15],
            disk=self.directory / f"lab-node{index}.img",
            console=self.directory / f"lab-node{index}.console.log",
        )

    def start(self, count: int) -> list[LabNode]:
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise LabError("--nodes needs QEMU: apt-get install qemu-system-x86 ipxe-qemu")
        self.directory.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            node = self.node_spec(index)
            ns = ("-n", self.net.namespace)
            ip(*ns, "tuntap", "add", "dev", node.tap, "mode", "tap")
            ip(*ns, "link", "set", node.tap, "master", self.net.bridge)
            ip(*ns, "link", "set", node.tap, "up")
            if not node.disk.exists():
                with node.disk.open("wb") as disk:
                    disk.truncate(DISK_BYTES)  # sparse: takes no space until written
            argv = [
                qemu,
                "-name", node.name,
                "-accel", "tcg",
                "-m", str(self.memory_mib),
                "-smp", "1",
                "-display", "none",
                "-monitor", "none",
                "-serial", f"file:{node.console}",
                "-netdev", f"tap,id=n0,ifname={node.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={node.mac}",
                "-drive", f"file={node.disk},format=raw,if=virtio",
                "-boot", "order=nc",
            ]  # fmt: skip
            node.process = subprocess.Popen(
                self.net.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(self.directory / f"{node.name}.qemu.log").open("wb"),
                start_new_session=True,
            )
            self.nodes.append(node)
            log.info("lab node %s (%s) started on %s", node.name, node.mac, node.tap)
        return self.nodes

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
            with contextlib.suppress(LabError):
                ip("-n", self.net.namespace, "link", "delete", node.tap, check=False)
        self.nodes.clear()
