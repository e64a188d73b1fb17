"""Re-capture `ipxe_bios_discover.bin` and `ipxe_uefi_discover.bin`: the DHCPDISCOVER of QEMU's own
iPXE ROM (package ipxe-qemu), under SeaBIOS and under OVMF (package ovmf).

Run from the repository root: `.venv/bin/python -m tests.data.dhcp.capture_ipxe`. QEMU's "socket"
network backend carries the guest's Ethernet frames over UDP on loopback, so no namespace or tap is
needed: the frames arrive on a local UDP socket and the first DHCP packet is kept.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).parent


def capture(name: str, firmware: list[str], timeout: float = 300.0) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-nodefaults", "-boot", "n", *firmware,
         "-netdev", f"socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:0",
         "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(deadline - time.monotonic())
            frame = sock.recv(65535)
            # Ethernet II, IPv4, UDP to port 67
            if frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            header = 14 + (frame[14] & 0x0F) * 4
            if int.from_bytes(frame[header + 2 : header + 4], "big") == 67:
                (HERE / name).write_bytes(frame[header + 8 :])
                print(name, len(frame) - header - 8, "bytes")
                return
        raise SystemExit("no DHCP packet from iPXE")
    finally:
        qemu.kill()
        qemu.wait()


if __name__ == "__main__":
    capture("ipxe_bios_discover.bin", [])
    capture("ipxe_uefi_discover.bin", ["-bios", "/usr/share/ovmf/OVMF.fd"])
