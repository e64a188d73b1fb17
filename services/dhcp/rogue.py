"""Rogue DHCP server detection on the served segments.

Another server's OFFER or ACK on a segment Kiln serves is the first thing that breaks a rack (clients
take whichever answer comes first). Kiln watches for server replies it did not send (a packet socket per
served interface, filtered in the kernel to UDP 67→68 from any address but its own) and, since servers
unicast offers to clients that do not ask for broadcast, it also sends its own DISCOVER with the
broadcast flag now and then, from a MAC of its own, so every server on the segment answers where Kiln
can hear it. Each rogue is an Event (once an hour per server) and a Prometheus counter.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter

from services.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    DISCOVER,
    MESSAGE_NAMES,
    OFFER,
    MalformedPacket,
    Packet,
    encode,
    parse,
)
from services.dhcp.responder import BROADCAST, SERVER_PORT, Interface

log = logging.getLogger(__name__)

# locally administered, spells "kiln": the server ignores requests from it (they are its own probes)
PROBE_MAC = bytes.fromhex("026b696c6e00")
PROBE_SECONDS = 60.0
FIRST_PROBE_SECONDS = 0.5
EVENT_EVERY_SECONDS = 3600.0
_ETH_P_IP = 0x0800
_SO_ATTACH_FILTER = 26

ROGUE = Counter(
    "kiln_dhcp_rogue_replies_total",
    "DHCP server replies seen on a served segment from a server that is not this Kiln",
    ["interface", "server", "mac"],
)


class EventSink(Protocol):
    def record_event(self, action: str, message: str, data: dict[str, object]) -> None: ...


def _server_reply_filter(own_address: int) -> bytes:
    """Classic BPF, on the IP header: UDP, source not us, not a fragment, ports 67 → 68."""
    drop = 12
    program = [
        (0x30, 0, 0, 9),  # ldb [9]               protocol
        (0x15, 0, drop - 2, 17),  # jeq #17
        (0x20, 0, 0, 12),  # ld [12]               source address
        (0x15, drop - 4, 0, own_address),  # jeq #own → drop
        (0x28, 0, 0, 6),  # ldh [6]               fragment offset
        (0x45, drop - 6, 0, 0x1FFF),  # jset #0x1fff → drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)      IP header length
        (0x48, 0, 0, 0),  # ldh [x+0]             UDP source port
        (0x15, 0, drop - 9, 67),  # jeq #67
        (0x48, 0, 0, 2),  # ldh [x+2]             UDP destination port
        (0x15, 0, 1, 68),  # jeq #68
        (0x06, 0, 0, 0xFFFF),  # ret accept
        (0x06, 0, 0, 0),  # ret drop
    ]
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


class RogueWatch:
    def __init__(self, interfaces: Sequence[tuple[Interface, socket.socket]], sink: EventSink) -> None:
        self.interfaces = list(interfaces)
        self.sink = sink
        self.selector = selectors.DefaultSelector()
        self._reported: dict[tuple[str, str], float] = {}
        self._filters: list[ctypes.Array[ctypes.c_char]] = []

    def open(self) -> None:
        for iface, _server_sock in self.interfaces:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP))
            program = _server_reply_filter(iface.address)
            buffer = ctypes.create_string_buffer(program)
            self._filters.append(buffer)  # the kernel copies it, but keep it alive until attached
            fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.bind((iface.name, _ETH_P_IP))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, iface)

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

    def probe(self) -> None:
        for _iface, sock in self.interfaces:
            discover = Packet(
                op=BOOTREQUEST,
                xid=int.from_bytes(os.urandom(4), "big"),
                chaddr=PROBE_MAC,
                flags=BROADCAST_FLAG,
                options={53: bytes((DISCOVER,)), 55: bytes((1, 3, 6, 54))},
            )
            try:
                sock.sendto(encode(discover), (BROADCAST, SERVER_PORT))
            except OSError as exc:
                log.debug("dhcp: rogue probe failed: %s", exc)

    def run(self, stop: threading.Event) -> None:
        next_probe = time.monotonic() + FIRST_PROBE_SECONDS
        while not stop.is_set():
            if time.monotonic() >= next_probe:
                self.probe()
                next_probe = time.monotonic() + PROBE_SECONDS
            for key, _events in self.selector.select(0.25):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                for _ in range(64):
                    try:
                        datagram, address = sock.recvfrom(4096)
                    except BlockingIOError:
                        break
                    self._seen(key.data, datagram, address[4])

    def _seen(self, iface: Interface, datagram: bytes, source_mac: bytes) -> None:
        header = (datagram[0] & 0x0F) * 4
        source_ip = socket.inet_ntoa(datagram[12:16])
        try:
            reply = parse(datagram[header + 8 :])
        except MalformedPacket:
            return
        if reply.op != BOOTREPLY or reply.message_type not in (OFFER, ACK):
            return
        server = str(socket.inet_ntoa(reply.options[54])) if 54 in reply.options else source_ip
        mac = source_mac.hex(":")
        ROGUE.labels(iface.name, server, mac).inc()
        now = time.monotonic()
        if now - self._reported.get((server, mac), -EVENT_EVERY_SECONDS) < EVENT_EVERY_SECONDS:
            return
        self._reported[(server, mac)] = now
        kind = MESSAGE_NAMES.get(reply.message_type or 0, "?")
        log.warning("dhcp: rogue DHCP server %s (%s) sent a %s on %s", server, mac, kind, iface.name)
        try:
            self.sink.record_event(
                "dhcp.rogue_server",
                f"another DHCP server {server} ({mac}) answers on {iface.name}",
                {"interface": iface.name, "server": server, "source": source_ip, "mac": mac, "message": kind},
            )
        except Exception:
            log.exception("dhcp: could not record the rogue server %s", server)
