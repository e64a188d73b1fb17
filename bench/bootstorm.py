"""Boot storm: N synthetic machines netboot into Kiln at the same moment.

    .venv/bin/python -m bench.bootstorm [--nodes 1000] [--initrd-mib 1] [--concurrency 1000]

Each client does what a BIOS PXE machine does, on the wire: DHCP DORA (vendor class PXEClient, arch 0)
→ TFTP of the boot file Kiln names (undionly.kpxe, blksize 1468) → HTTP iPXE script for its MAC →
HTTP initrd (a synthetic file of --initrd-mib) → POST /api/v2/discovery with an inventory. Kiln runs
as `kiln serve --only web,dhcp,tftp` in a namespace; the clients run in a second namespace on the same
bridge, each with its leased address, all on one asyncio loop. Prints per-phase p50/p99, the slowest
phase, and nodes registered vs lost. Goal: 1,000 nodes in <= 60 s, 0 lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

SERVER = "10.79.0.1"
CIDR = "10.79.0.0/21"
POOL = ("10.79.1.1", "10.79.7.250")
PORT = 8080
PHASES = ("dhcp", "tftp", "script", "initrd", "register")
DHCP_TIMEOUT = 2.0
TFTP_TIMEOUT = 2.0
RETRIES = 5
INITRD_BYTES = 0  # set from --initrd-mib


@dataclass
class Client:
    index: int
    mac: bytes
    xid: int
    address: str = ""
    bootfile: str = ""
    times: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def mac_text(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)


# ---- client side: runs inside the client namespace (`--client`) ----------------------------------------


def _dhcp_packet(
    kind: int, client: Client, server_id: bytes | None = None, requested: bytes | None = None
) -> bytes:
    from services.dhcp.packet import BOOTREQUEST, BROADCAST_FLAG, Packet, encode

    opts = {
        53: bytes((kind,)),
        60: b"PXEClient:Arch:00000:UNDI:002001",
        93: b"\x00\x00",
        94: b"\x01\x02\x01",
    }
    if server_id:
        opts[54] = server_id
    if requested:
        opts[50] = requested
    return encode(
        Packet(op=BOOTREQUEST, xid=client.xid, chaddr=client.mac, flags=BROADCAST_FLAG, options=opts)
    )


class DhcpProtocol(asyncio.DatagramProtocol):
    def __init__(self, clients: dict[int, Client], waiters: dict[int, asyncio.Future[Any]]) -> None:
        self.clients = clients
        self.waiters = waiters

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from services.dhcp.packet import MalformedPacket, parse

        try:
            packet = parse(data)
        except MalformedPacket:
            return
        waiter = self.waiters.get(packet.xid)
        if packet.op == 2 and waiter is not None and not waiter.done():
            waiter.set_result(packet)


async def dhcp(
    client: Client, transport: asyncio.DatagramTransport, waiters: dict[int, asyncio.Future[Any]]
) -> None:
    from services.dhcp.packet import ACK, DISCOVER, OFFER, REQUEST

    loop = asyncio.get_running_loop()

    async def exchange(payload: bytes, want: int) -> Any:
        for _ in range(RETRIES):
            waiter: asyncio.Future[Any] = loop.create_future()
            waiters[client.xid] = waiter
            transport.sendto(payload, ("255.255.255.255", 67))
            try:
                reply = await asyncio.wait_for(waiter, DHCP_TIMEOUT)
            except TimeoutError:
                continue
            kind = reply.options.get(53)
            if kind == bytes((want,)):
                return reply
            if kind == b"\x06":  # NAK: this exchange is over
                raise RuntimeError("DHCP NAK")
        raise RuntimeError(f"no DHCP {want} after {RETRIES} tries")

    # like a real client, start over from DISCOVER when a REQUEST goes unanswered or is refused
    for _cycle in range(3):
        offer = await exchange(_dhcp_packet(DISCOVER, client), OFFER)
        try:
            ack = await exchange(
                _dhcp_packet(REQUEST, client, offer.options[54], struct.pack("!I", offer.yiaddr)), ACK
            )
            break
        except RuntimeError:
            client.times["dhcp_restarts"] = client.times.get("dhcp_restarts", 0) + 1
    else:
        raise RuntimeError("no DHCP lease after 3 DORA cycles")
    waiters.pop(client.xid, None)
    client.address = socket.inet_ntoa(struct.pack("!I", ack.yiaddr))
    client.bootfile = ack.options.get(67, b"").rstrip(b"\0").decode()


class TftpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


async def tftp(client: Client, blksize: int = 1468) -> int:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(TftpProtocol, local_addr=(client.address, 0))
    try:
        rrq = b"\0\1" + client.bootfile.encode() + b"\0octet\0blksize\0" + str(blksize).encode() + b"\0"
        last_sent, peer = rrq, (SERVER, 69)
        transport.sendto(rrq, peer)
        expected, received, tries = 1, 0, 0
        while True:
            try:
                data, addr = await asyncio.wait_for(proto.queue.get(), TFTP_TIMEOUT)
            except TimeoutError:
                tries += 1
                if tries > RETRIES:
                    raise RuntimeError("TFTP timed out") from None
                transport.sendto(last_sent, peer)
                continue
            tries = 0
            opcode = struct.unpack("!H", data[:2])[0]
            peer = addr
            if opcode == 6:  # OACK
                last_sent = b"\0\4\0\0"
            elif opcode == 3:
                block = struct.unpack("!H", data[2:4])[0]
                if block == expected & 0xFFFF:
                    received += len(data) - 4
                    expected += 1
                last_sent = b"\0\4" + data[2:4]
                if block == (expected - 1) & 0xFFFF and len(data) - 4 < blksize:
                    transport.sendto(last_sent, peer)
                    return received
            elif opcode == 5:
                raise RuntimeError(f"TFTP error {data[4:-1].decode(errors='replace')}")
            transport.sendto(last_sent, peer)
    finally:
        transport.close()


async def http(client: Client, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(SERVER, PORT, local_addr=(client.address, 0))
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {SERVER}:{PORT}\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    header, _, content = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, content


def inventory(client: Client) -> dict[str, Any]:
    return {
        "schema": 1,
        "boot_mac": client.mac_text,
        "system": {"manufacturer": "Kiln bench", "product": "synthetic", "uuid": None},
        "cpu": {"threads": 8, "sockets": 1, "cores_per_socket": 8, "model": "bench"},
        "memory": {"total_mb": 16384, "kernel_kb": 16000000, "dimms": 2},
        "disks": [{"name": "sda", "size_bytes": 480103981056, "serial": f"BENCH{client.index:06d}"}],
        "nics": [
            {"name": "eth0", "mac": client.mac_text, "driver": "ixgbe", "link": True, "speed_mbps": 10000}
        ],
        "bmc": {"present": False},
    }


async def boot(
    client: Client, transport: asyncio.DatagramTransport, waiters: dict[int, Any], ns_add: Any
) -> None:
    t = time.monotonic()
    client.times["start"] = t
    try:
        await dhcp(client, transport, waiters)
        await ns_add(client.address)
        client.times["dhcp"] = time.monotonic()
        await tftp(client)
        client.times["tftp"] = time.monotonic()
        status, script = await http(client, "GET", f"/boot/ipxe?mac={client.mac_text}")
        token = script.decode().split("kiln.token=", 1)[1].split()[0] if status == 200 else ""
        if not token:
            raise RuntimeError(f"iPXE script without token ({status})")
        client.times["script"] = time.monotonic()
        status, initrd = await http(client, "GET", "/boot/files/discovery/initrd.img")
        if status != 200 or len(initrd) != INITRD_BYTES:
            raise RuntimeError(f"initrd {status}, {len(initrd)} bytes")
        client.times["initrd"] = time.monotonic()
        body = json.dumps({"token": token, **inventory(client)}).encode()
        status, answer = await http(client, "POST", "/api/v2/discovery", body)
        if status != 201:
            raise RuntimeError(f"discovery POST {status}: {answer[:200]!r}")
        client.times["register"] = time.monotonic()
    except Exception as exc:  # a lost node is reported, not fatal to the storm
        client.error = f"{type(exc).__name__}: {exc}"


async def storm(count: int, iface: str, concurrency: int) -> list[Client]:
    rng = random.Random(7)
    clients = [
        Client(i, bytes((0x52, 0x54, 0x01)) + i.to_bytes(3, "big"), rng.getrandbits(32)) for i in range(count)
    ]
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("0.0.0.0", 68))
    waiters: dict[int, Any] = {}
    transport, _ = await loop.create_datagram_endpoint(lambda: DhcpProtocol({}, waiters), sock=sock)
    lock = asyncio.Lock()

    async def ns_add(address: str) -> None:
        # the client's leased address, on the client's interface, so the server sees it as the source
        async with lock:
            proc = await asyncio.create_subprocess_exec(
                "ip", "addr", "add", f"{address}/21", "dev", iface, stderr=asyncio.subprocess.DEVNULL
            )
            await proc.wait()

    gate = asyncio.Semaphore(concurrency)

    async def gated(client: Client) -> None:
        async with gate:
            await boot(client, transport, waiters, ns_add)

    await asyncio.gather(*(gated(c) for c in clients))
    transport.close()
    return clients


def client_main(args: argparse.Namespace) -> None:
    global INITRD_BYTES
    INITRD_BYTES = int(args.initrd_mib * 2**20)
    started = time.monotonic()
    clients = asyncio.run(storm(args.nodes, args.iface, args.concurrency))
    out = {
        "wall": time.monotonic() - started,
        "clients": [{"times": c.times, "error": c.error, "address": c.address} for c in clients],
    }
    json.dump(out, sys.stdout)


# ---- orchestration: namespaces, Kiln, results ----------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: dict[str, Any], registered: int, nodes: int) -> None:
    clients = result["clients"]
    ok = [c for c in clients if not c["error"]]
    print(
        f"boot storm: {nodes} synthetic nodes, wall {result['wall']:.1f} s, registered {registered}, lost {nodes - registered}"
    )
    worst = ("", 0.0)
    previous = "start"
    print(f"  {'phase':<10} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for phase in PHASES:
        durations = [(c["times"][phase] - c["times"][previous]) * 1000 for c in ok if phase in c["times"]]
        if durations:
            p99 = percentile(durations, 0.99)
            print(f"  {phase:<10} {statistics.median(durations):>9.1f} {p99:>9.1f} {max(durations):>9.1f}")
            if p99 > worst[1]:
                worst = (phase, p99)
        previous = phase
    totals = [(c["times"]["register"] - c["times"]["start"]) for c in ok]
    if totals:
        print(
            f"  {'total':<10} {statistics.median(totals) * 1000:>9.1f} {percentile(totals, 0.99) * 1000:>9.1f}"
        )
    print(f"  slowest component (p99): {worst[0]}")
    restarts = sum(int(c["times"].get("dhcp_restarts", 0)) for c in clients)
    if restarts:
        print(f"  DHCP exchanges restarted from DISCOVER (REQUEST unanswered or NAKed): {restarts}")
    errors: dict[str, int] = {}
    for c in clients:
        if c["error"]:
            errors[c["error"][:80]] = errors.get(c["error"][:80], 0) + 1
    for message, count in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  lost: {count} x {message}")
    goal = "met" if registered == nodes and result["wall"] <= 60 else "NOT met"
    print(f"  goal 1,000 nodes <= 60 s, 0 lost: {goal} for {nodes} nodes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--initrd-mib", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1000, help="clients in flight at once")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--iface", default="eth0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client_main(args)
        return 0

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from appliance.annealer import barclamps
    from appliance.models import Node
    from tests.e2e.netboot_lab import NetbootLab
    from tests.netns import Namespace, veth

    work = Path(tempfile.mkdtemp(prefix="kiln-bootstorm-"))
    image = work / "image"
    image.mkdir()
    (image / "vmlinuz").write_bytes(os.urandom(1024))
    (image / "initrd.img").write_bytes(os.urandom(int(args.initrd_mib * 2**20)))
    lab = NetbootLab.create(
        work / "kiln",
        image,
        cidr=CIDR,
        pool=POOL,
        services="web,dhcp,tftp",
    )
    clients_ns = Namespace.create("kbstc")
    try:
        with lab.db.session() as s:
            barclamps.load_core(s)
        veth(lab.ns, "storm0", clients_ns, "eth0")
        lab.ns.run(["ip", "link", "set", "storm0", "master", "br0"])
        proc = clients_ns.run(
            [sys.executable, "-m", "bench.bootstorm", "--client", "--nodes", str(args.nodes),
             "--initrd-mib", str(args.initrd_mib),
             "--concurrency", str(args.concurrency), "--iface", "eth0"],
            cwd=str(root), timeout=600,
        )  # fmt: skip
        result = json.loads(proc.stdout)
        with lab.db.read_session() as s:
            registered = int(s.scalar(select(func.count()).select_from(Node)) or 0)
        report(result, registered, args.nodes)
    except subprocess.CalledProcessError as exc:
        print(exc.stderr[-3000:], file=sys.stderr)
        return 1
    finally:
        clients_ns.delete()
        lab.close()
        if args.keep:
            print(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
