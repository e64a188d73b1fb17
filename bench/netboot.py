"""Seconds from power-on to a registered node, per boot phase, for QEMU (TCG) machines netbooting Kiln.

    .venv/bin/python -m bench.netboot [--kinds bios-virtio,bios-e1000,uefi-pxe] [--no-peer]

Kiln (`kiln serve --only web,dhcp,tftp,ra`) runs in a namespace with a bridge; each VM boots alone on it.
The peer run swaps Kiln's DHCP and TFTP for dnsmasq (same web, same discovery image, same RA answer),
so the ratio isolates Kiln's boot services. Phases:

  dhcp      power-on → the firmware's first DHCPACK                     (sniffed on the bridge)
  loader    first ACK → iPXE asks for its script (TFTP of iPXE for UEFI) (Kiln's BootFetch row)
  download  script → last byte of the kernel/initrd download            (sniffed on the bridge)
  unpack    download → kernel running: the bzImage decompressing itself  (POST time - kernel uptime)
            (Debian's kernel is xz-compressed: ~3.5 s under TCG, see DESIGN-NOTES.md)
  kernel    kernel start → /init                                         (agent-reported uptimes)
  drivers   /init → drivers loaded by modalias
  agent     drivers → agent's DHCP lease
  report    lease → inventory POSTed and the node registered
Goal: BIOS virtio <= 8 s (a minimal server did 7.2-7.5 s on this kind of machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("dhcp", "loader", "download", "unpack", "kernel", "drivers", "agent", "report")


class DhcpSniffer:
    """First DHCPACK time per client MAC, and the time of each HTTP payload segment the web server sends,
    from a raw socket on the lab bridge."""

    def __init__(self, sock: socket.socket, web_port: int) -> None:
        self.sock = sock
        self.web_port = web_port
        self.first_ack: dict[str, float] = {}
        self.http_sent: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            now = time.time()
            if len(frame) < 42 or frame[12:14] != b"\x08\x00":
                continue
            ihl = (frame[14] & 0x0F) * 4
            if frame[23] == 6:
                self._tcp(frame, ihl, now)
                continue
            if frame[23] != 17:
                continue
            udp = 14 + ihl
            sport, dport = struct.unpack("!HH", frame[udp : udp + 4])
            if sport != 67 or dport != 68:
                continue
            bootp = frame[udp + 8 :]
            if len(bootp) < 240:
                continue
            mac = ":".join(f"{b:02x}" for b in bootp[28:34])
            options = bootp[240:]
            i = 0
            while i + 1 < len(options) and options[i] != 255:
                if options[i] == 0:
                    i += 1
                    continue
                code, length = options[i], options[i + 1]
                if code == 53 and length == 1 and options[i + 2] == 5:
                    self.first_ack.setdefault(mac, now)
                i += 2 + length

    def _tcp(self, frame: bytes, ihl: int, now: float) -> None:
        tcp = 14 + ihl
        if len(frame) < tcp + 20 or struct.unpack("!H", frame[tcp : tcp + 2])[0] != self.web_port:
            return
        total = struct.unpack("!H", frame[16:18])[0]  # IP total length: payload = total - headers
        if total - ihl - (frame[tcp + 12] >> 4) * 4 > 0:
            self.http_sent.append(now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def _ts(moment: dt.datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def boot_once(lab: Any, kind: str, sniffer: DhcpSniffer, timeout: float) -> dict[str, float]:
    from appliance.models import BootFetch

    started = time.time()
    vm = lab.start_vm(kind, memory_mib=512)
    try:
        node = lab.wait_for_node(vm, timeout=timeout)
    finally:
        lab.stop_vm(vm)
    with lab.db.read_session() as s:
        fetch = s.scalar(select(BootFetch).where(BootFetch.mac == vm.mac).order_by(BootFetch.at).limit(1))
        script_at = _ts(fetch.at) if fetch is not None else float("nan")
    registered = _ts(node.created_at)
    boot = node.inventory.get("boot", {})
    kernel_start = registered - float(boot.get("uptime_s") or 0)
    # the last segment the web server sent before the kernel ran ends the kernel + initrd download
    sent = [t for t in sniffer.http_sent if script_at <= t <= kernel_start]
    marks = {
        "start": started,
        "dhcp": sniffer.first_ack.get(vm.mac, float("nan")),
        "loader": script_at,
        "download": max(sent) if sent else float("nan"),
        "unpack": kernel_start,
        "kernel": kernel_start + float(boot.get("init_start_s") or 0),
        "drivers": kernel_start + float(boot.get("drivers_done_s") or 0),
        "agent": kernel_start + float(boot.get("network_up_s") or 0),
        "report": registered,
    }
    phases = {}
    previous = "start"
    for phase in PHASES:
        phases[phase] = marks[phase] - marks[previous]
        previous = phase
    phases["total"] = registered - started
    return phases


def _dnsmasq(lab: Any, workdir: Path) -> subprocess.Popen[bytes]:
    from tests.e2e.netboot_lab import POOL, SERVER, WEB_PORT

    tftp = workdir / "peer-tftp"
    tftp.mkdir(exist_ok=True)
    for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi"):
        shutil.copyfile(f"/usr/lib/ipxe/{name}", tftp / name)
    argv = [
        "dnsmasq", "-d", "--port=0", "--interface=br0", "--bind-interfaces", "--no-ping",
        f"--dhcp-range={POOL[0]},{POOL[1]},1h", "--dhcp-lease-max=10000",
        f"--dhcp-leasefile={workdir / 'peer.leases'}", f"--pid-file={workdir / 'peer.pid'}",
        "--enable-tftp", f"--tftp-root={tftp}",
        "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi64,option:client-arch,7",
        f"--dhcp-boot=tag:ipxe,http://{SERVER}:{WEB_PORT}/boot/ipxe?mac=${{net0/mac}}",
        "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi", "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        # iPXE: no proxyDHCP wait (option 175.176 = 1), as Kiln's DHCP sends
        "--dhcp-option=tag:ipxe,175,b0:01:01",
    ]  # fmt: skip
    log = (workdir / "dnsmasq.log").open("wb")
    return lab.ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)


def run(
    label: str, kinds: list[str], runs: int, image: Path, peer: bool, timeout: float
) -> dict[str, list[dict[str, float]]]:
    from tests.e2e.netboot_lab import WEB_PORT, NetbootLab

    workdir = Path(tempfile.mkdtemp(prefix=f"kiln-netboot-{label}-"))
    services = "web,ra" if peer else "web,dhcp,tftp,ra"
    lab = NetbootLab.create(workdir, image, services=services)
    dnsmasq = _dnsmasq(lab, workdir) if peer else None
    raw = lab.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    raw.bind(("br0", 0))
    sniffer = DhcpSniffer(raw, WEB_PORT)
    results: dict[str, list[dict[str, float]]] = {}
    try:
        for kind in kinds:
            results[kind] = [boot_once(lab, kind, sniffer, timeout) for _ in range(runs)]
    finally:
        sniffer.close()
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(10)
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default="bios-virtio,bios-e1000,uefi-pxe")
    parser.add_argument("--runs", type=int, default=1, help="boots per kind (medians are printed)")
    parser.add_argument("--no-peer", action="store_true", help="skip the dnsmasq run")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from discovery_image import build

    image = build.build(Path("/var/tmp/kiln-e2e-discovery"))
    print(f"discovery image {image.digest}: initrd {image.initrd_size / 2**20:.1f} MiB")
    kinds = args.kinds.split(",")
    kiln = run("kiln", kinds, args.runs, image.directory, False, args.timeout)
    peer = {} if args.no_peer else run("peer", kinds, args.runs, image.directory, True, args.timeout)
    header = "  ".join(f"{p:>7}" for p in (*PHASES, "total"))
    print(f"{'kind':<12} {'server':<8} {header}")
    for kind in kinds:
        for label, results in (("kiln", kiln), ("dnsmasq", peer)):
            if kind not in results:
                continue
            row = "  ".join(f"{median([r[p] for r in results[kind]]):7.2f}" for p in (*PHASES, "total"))
            print(f"{kind:<12} {label:<8} {row}")
        if kind in peer:
            ratio = median([r["total"] for r in peer[kind]]) / median([r["total"] for r in kiln[kind]])
            print(f"{kind:<12} {'ratio':<8} dnsmasq/kiln total = {ratio:.2f} (>1: Kiln faster)")
    if "bios-virtio" in kiln:
        total = median([r["total"] for r in kiln["bios-virtio"]])
        print(f"goal BIOS virtio <= 8 s: {'met' if total <= 8 else 'NOT met'} ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
