"""Re-capture the golden DHCP packets in this folder from the real clients installed on this machine.

Run as root from the repository root: `.venv/bin/python -m tests.data.dhcp.capture`. Each client runs in
a namespace of its own, cabled to a namespace where a UDP socket on port 67 records what arrives.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.netns import Namespace, veth

HERE = Path(__file__).parent
CLIENTS = {
    "dhclient_discover.bin": [
        "dhclient",
        "-d",
        "-1",
        "-cf",
        "/dev/null",
        "-lf",
        "/dev/null",
        "-pf",
        "/dev/null",
        "eth0",
    ],
    "nmap_discover.bin": ["nmap", "--script", "broadcast-dhcp-discover", "-e", "eth0"],
    "perfdhcp_discover.bin": ["perfdhcp", "-4", "-l", "eth0", "-r", "1", "-n", "1", "-R", "1"],
}


def capture(name: str, argv: list[str]) -> None:
    server, client = Namespace.create("cap"), Namespace.create("capc")
    try:
        veth(server, "eth0", client, "eth0")
        server.address("eth0", "10.77.0.1/24")
        # nmap's broadcast scripts skip interfaces without an address
        client.address("eth0", "10.77.0.2/24")
        sock = server.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", 67))
        sock.settimeout(15)
        proc = client.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data, _ = sock.recvfrom(4096)
        finally:
            proc.kill()
            proc.wait()
        (HERE / name).write_bytes(data)
        print(name, len(data), "bytes")
    finally:
        server.delete()
        client.delete()


if __name__ == "__main__":
    for filename, command in CLIENTS.items():
        capture(filename, command)
