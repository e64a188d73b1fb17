"""A DHCP lab for tests and bench/dhcp.py: Kiln's DHCP (`kiln serve --only dhcp`) in a namespace.

`seed_network()` writes a network with a dynamic pool; `KilnDhcp.start()` runs the real server process
inside a namespace against that database and waits until it says it is ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import ipam
from appliance.db import Database
from appliance.models import Network
from services.dhcp.packet import BOOTREQUEST, BROADCAST_FLAG, Packet, encode, parse
from tests.netns import Namespace

KILN = str(Path(sys.executable).parent / "kiln")


def seed_network(
    db: Database,
    name: str,
    cidr: str,
    pool: tuple[str, str] | None,
    *,
    interface: str | None = None,
    gateway: str | None = None,
    dns: list[str] | None = None,
    domain: str | None = None,
    ntp: list[str] | None = None,
) -> int:
    with db.session() as session:
        net = Network(
            name=name,
            cidr=cidr,
            interface=interface,
            gateway=gateway,
            dns_servers=dns or [],
            domain=domain,
            ntp_servers=ntp or [],
        )
        ipam.validate_network(net)
        session.add(net)
        session.flush()
        if pool:
            ipam.make_range(session, net, "dynamic", "dynamic", pool[0], pool[1])
        return net.id


@dataclass
class KilnDhcp:
    ns: Namespace
    workdir: Path
    db_url: str
    interfaces: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[Any] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "kiln-dhcp.log"

    def start(self, timeout: float = 30.0) -> KilnDhcp:
        env = dict(os.environ)
        env.update(
            {
                "KILN_CONFIG": str(self.workdir / "absent.toml"),
                "KILN_STATE_DIR": str(self.workdir / "state"),
                "KILN_DATABASE_URL": self.db_url,
                "KILN_SECRET_KEY": "lab-secret",
                "KILN_DHCP_INTERFACES": ",".join(self.interfaces),
                "KILN_LOG_LEVEL": "INFO",
            }
        )
        env.update(self.env)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = self.ns.popen(
            [KILN, "serve", "--only", "dhcp"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if "dhcp: ready" in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln dhcp exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kiln dhcp not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed that was not already committed."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def metrics(self) -> str:
        port = self.env.get("KILN_METRICS_PORT", "9672")
        out = self.ns.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], check=False)
        return out.stdout


def client_socket(ns: Namespace, ifname: str, port: int = 68) -> socket.socket:
    """A UDP socket in `ns` on `ifname` that can send and receive DHCP broadcasts."""
    sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())  # SO_BINDTODEVICE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    return sock


def mac_for(number: int) -> bytes:
    return bytes((0x52, 0x54, 0x00)) + number.to_bytes(3, "big")


def request_packet(
    kind: int, mac: bytes, xid: int, opts: dict[int, bytes] | None = None, **fields: int
) -> bytes:
    options = {53: bytes((kind,))}
    options.update(opts or {})
    return encode(
        Packet(op=BOOTREQUEST, xid=xid, chaddr=mac, flags=BROADCAST_FLAG, options=options, **fields)
    )


def collect(
    sock: socket.socket, want: int, timeout: float, xid: int | None = None
) -> list[tuple[Packet, tuple[str, int]]]:
    """DHCP replies (to transaction `xid`, if given) received until `want` arrived or `timeout` passed."""
    replies: list[tuple[Packet, tuple[str, int]]] = []
    deadline = time.monotonic() + timeout
    while len(replies) < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(4096)
        except TimeoutError:
            break
        packet = parse(data)
        if packet.op == 2 and xid in (None, packet.xid):
            replies.append((packet, source))
    return replies
