"""A netboot lab for the e2e tests and bench/netboot.py: Kiln's web + DHCP + TFTP (`kiln serve`) inside a
network namespace with a bridge, and QEMU machines (TCG) whose NIC is a tap on that bridge.

    lab = NetbootLab.create(workdir, image_dir)      # namespace, bridge, database, kiln serve
    vm = lab.start_vm("bios-virtio", memory_mib=512, disks=[1 << 30])
    node = lab.wait_for_node(vm.mac, timeout=60)
    lab.close()                                      # VMs, kiln, namespace: everything removed

Nothing leaves the namespace: the bridge has no uplink, QEMU's only NIC is a tap on it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance import ipam
from appliance.db import Database, create_database
from appliance.models import Network, Node, NodeMac
from tests.netns import Namespace, unique

KILN = str(Path(sys.executable).parent / "kiln")
QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SERVER = "10.79.0.1"
CIDR = "10.79.0.0/24"
POOL = ("10.79.0.100", "10.79.0.199")
WEB_PORT = 8080
_mac_numbers = itertools.count(1)

# firmware + NIC combinations the tests boot
KINDS = {
    # SeaBIOS; the NIC's option ROM is Debian's iPXE (ipxe-qemu), which goes straight to /boot/ipxe
    "bios-virtio": ("bios", "virtio-net-pci"),
    "bios-e1000": ("bios", "e1000"),
    # OVMF's own PXE (the NIC's iPXE ROM removed): TFTP of the UEFI loader Kiln's DHCP names
    "uefi-pxe": ("uefi", "virtio-net-pci"),
}


@dataclass
class VM:
    name: str
    kind: str
    mac: str
    memory_mib: int
    disks: list[tuple[Path, int, str]]
    console: Path
    process: subprocess.Popen[bytes]
    started: float

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""


@dataclass
class NetbootLab:
    ns: Namespace
    workdir: Path
    db: Database
    kiln: subprocess.Popen[bytes]
    services: str = "web,dhcp,tftp,ra"
    vms: list[VM] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "kiln-serve.log"

    @classmethod
    def create(
        cls,
        workdir: Path,
        image_dir: Path,
        *,
        uefi_loader: str = "snponly.efi",
        cidr: str = CIDR,
        pool: tuple[str, str] = POOL,
        services: str = "web,dhcp,tftp,ra",
        extra_env: dict[str, str] | None = None,
    ) -> NetbootLab:
        workdir.mkdir(parents=True, exist_ok=True)
        state = workdir / "state"
        (state / "discovery").mkdir(parents=True, exist_ok=True)
        (state / "discovery" / "current").symlink_to(image_dir.resolve())
        db_url = f"sqlite:///{workdir / 'kiln.db'}"
        db = create_database(db_url)
        with db.session() as s:
            net = Network(name="admin", cidr=cidr, interface="br0", gateway=None, dns_servers=[])
            ipam.validate_network(net)
            s.add(net)
            s.flush()
            ipam.make_range(s, net, "dynamic", "dynamic", *pool)
        ns = Namespace.create("kne2e")
        try:
            ns.run(["ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0"])
            prefix = cidr.split("/")[1]
            ns.run(["ip", "addr", "add", f"{SERVER}/{prefix}", "dev", "br0"])
            ns.run(["ip", "link", "set", "br0", "up"])
            env = dict(os.environ)
            env.update(
                {
                    "KILN_CONFIG": str(workdir / "absent.toml"),
                    "KILN_STATE_DIR": str(state),
                    "KILN_DATABASE_URL": db_url,
                    "KILN_SECRET_KEY": "e2e-secret-key-not-for-production",
                    "KILN_ADVERTISE_ADDRESS": SERVER,
                    "KILN_WEB_BIND": f"0.0.0.0:{WEB_PORT}",
                    "KILN_WEB_PORT": str(WEB_PORT),
                    "KILN_DHCP_INTERFACES": "br0",
                    "KILN_DHCP_UEFI_LOADER": uefi_loader,
                    "KILN_TFTP_ROOT": str(workdir / "tftp"),
                    "KILN_LOG_LEVEL": "INFO",
                }
            )
            env.update(extra_env or {})
            log = (workdir / "kiln-serve.log").open("ab")
            proc = ns.popen(
                [KILN, "serve", "--only", services],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            log.close()
        except BaseException:
            ns.delete()
            raise
        lab = cls(ns=ns, workdir=workdir, db=db, kiln=proc, services=services)
        try:
            lab._wait_ready()
        except BaseException:
            lab.close()
            raise
        return lab

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kiln.poll() is not None:
                raise RuntimeError(f"kiln serve exited {self.kiln.returncode}:\n{self.log_path.read_text()}")
            text = self.log_path.read_text(errors="replace")
            web = self.ns.run(
                ["curl", "-sf", "-o", "/dev/null", f"http://{SERVER}:{WEB_PORT}/healthz"], check=False
            )
            if ("dhcp: ready" in text or "dhcp" not in self.services) and web.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"kiln serve not ready after {timeout}s:\n{self.log_path.read_text()}")

    def start_vm(
        self,
        kind: str,
        *,
        memory_mib: int = 512,
        disks: tuple[int, ...] = (1 << 30,),
        mac: str | None = None,
        bmc: bool = False,
    ) -> VM:
        firmware, nic = KINDS[kind]
        number = next(_mac_numbers)
        mac = mac or f"52:54:00:{os.getpid() % 256:02x}:{(number >> 8) & 0xFF:02x}:{number & 0xFF:02x}"
        name = f"vm{number}"
        tap = unique("kt")
        self.ns.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        self.ns.run(["ip", "link", "set", tap, "master", "br0"])
        self.ns.run(["ip", "link", "set", tap, "up"])
        self.taps.append(tap)
        console = self.workdir / f"{name}.console.log"
        argv = [
            QEMU, "-name", name, "-accel", "tcg", "-m", str(memory_mib), "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        ]  # fmt: skip
        nic_args = f"{nic},netdev=n0,mac={mac},bootindex=1"
        if firmware == "uefi":
            vars_copy = self.workdir / f"{name}.vars.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += [
                "-machine", "q35",
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,file={vars_copy}",
            ]  # fmt: skip
            nic_args += ",romfile="  # no iPXE ROM: the firmware's own PXE client boots
        argv += ["-device", nic_args]
        if bmc:
            # QEMU's own BMC simulator behind a KCS interface: the guest sees /dev/ipmi0 (in-band IPMI)
            argv += ["-device", "ipmi-bmc-sim,id=bmc0", "-device", "isa-ipmi-kcs,bmc=bmc0"]
        disk_list = []
        for i, size in enumerate(disks):
            path = self.workdir / f"{name}.disk{i}.raw"
            with path.open("wb") as handle:
                handle.truncate(size)
            serial = f"KILN{number:04d}D{i}"
            argv += [
                "-drive", f"file={path},if=none,id=d{i},format=raw",
                "-device", f"virtio-blk-pci,drive=d{i},serial={serial}",
            ]  # fmt: skip
            disk_list.append((path, size, serial))
        process = subprocess.Popen(
            self.ns.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"{name}.qemu.log").open("wb"),
            start_new_session=True,
        )
        vm = VM(name, kind, mac, memory_mib, disk_list, console, process, time.monotonic())
        self.vms.append(vm)
        return vm

    def node_for(self, mac: str) -> Node | None:
        with self.db.read_session() as s:
            row = s.get(NodeMac, mac)
            return None if row is None else s.get(Node, row.node_id)

    def wait_for_node(self, vm: VM, timeout: float = 90.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.node_for(vm.mac)
            if node is not None:
                return node
            if vm.process.poll() is not None:
                raise AssertionError(f"{vm.name} exited:\n{vm.console_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(
            f"{vm.name} ({vm.kind}, {vm.mac}) not registered after {timeout}s\n"
            f"console:\n{vm.console_text()[-3000:]}\nkiln:\n{self.log_path.read_text()[-3000:]}"
        )

    def nodes(self) -> list[Node]:
        with self.db.read_session() as s:
            return list(s.scalars(select(Node).order_by(Node.id)))

    def stop_vm(self, vm: VM) -> None:
        if vm.process.poll() is None:
            vm.process.kill()
        vm.process.wait()

    def close(self) -> None:
        for vm in self.vms:
            with contextlib.suppress(ProcessLookupError):
                self.stop_vm(vm)
        if self.kiln.poll() is None:
            self.kiln.send_signal(signal.SIGTERM)
            try:
                self.kiln.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kiln.kill()
                self.kiln.wait()
        self.ns.delete()
        self.db.dispose()

    def metric(self, name: str) -> float:
        """A counter of `kiln serve`'s Prometheus endpoint inside the namespace (0 when absent)."""
        text = self.ns.run(["curl", "-s", "http://127.0.0.1:9670/metrics"], check=False).stdout
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kiln_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def summary(vm: VM, extra: dict[str, Any] | None = None) -> str:
    return f"{vm.name} {vm.kind} {vm.mac} {extra or ''}"
