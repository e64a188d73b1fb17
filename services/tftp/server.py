"""The TFTP responder: one epoll loop, one connected socket per transfer, timers scanned in the loop.

Hot path (per ACK): recv 4 bytes, map the 16-bit block number into the window, send the next
window with `send` on the connected socket; a lock-step ACK is handled inline. No thread per
transfer; files are read once (services/tftp/files.py) and sliced per block.
Wildcard binds use IP_PKTINFO so each transfer answers from the address the client asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client import Counter

from appliance.config import Settings
from appliance.db import Database
from services import busypoll
from services.tftp import packet
from services.tftp.files import FileStore, Refused, install_loaders

log = logging.getLogger(__name__)

MALFORMED = Counter("kiln_tftp_malformed_packets_total", "TFTP packets dropped because they did not parse")
REQUESTS = Counter("kiln_tftp_requests_total", "TFTP requests by outcome", ["result"])
BYTES_SENT = Counter("kiln_tftp_bytes_sent_total", "File bytes sent by completed TFTP transfers")

DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRIES = 5
TICK = 0.05  # timer resolution; retransmit timeouts are whole seconds (RFC 2349)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # <linux/in.h>; Python 3.11 does not name it on Linux
SIOCGIFMTU = 0x8921  # <linux/sockios.h>
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_DATA_HEADER = struct.Struct("!HH")


def interface_mtu(ifindex: int) -> int:
    """The MTU of an interface by index; 65535 (no limit beyond UDP's) when it cannot be read."""
    try:
        name = socket.if_indextoname(ifindex)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            raw = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, struct.pack("16si", name.encode(), 0))
        return int(struct.unpack("16si", raw)[1])
    except OSError:
        return 65535


class Transfer:
    """One read transfer: blocks 1..last of `content`, sent in windows of `window` blocks."""

    __slots__ = (
        "acked",
        "blksize",
        "content",
        "deadline",
        "last",
        "name",
        "oack",
        "oack_pending",
        "peer",
        "retries",
        "sent",
        "sock",
        "timeout",
        "window",
    )

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        name: str,
        content: bytes,
        nego: packet.Negotiated,
        timeout: float,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.name = name
        self.content = content
        self.blksize = nego.blksize
        self.window = nego.windowsize
        self.timeout = nego.timeout or timeout
        self.oack = packet.build_oack(nego.oack) if nego.oack else b""
        # the final block is short, possibly empty (RFC 1350 §6)
        self.last = len(content) // self.blksize + 1
        self.acked = 0  # highest block the client acknowledged (0: none, or the OACK)
        self.sent = 0  # highest block sent
        self.retries = 0
        self.deadline = 0.0
        self.oack_pending = bool(self.oack)  # until the client ACKs block 0 (RFC 2347)
        if self.window > 1:
            # room for a whole window in the kernel, or the tail of a big window is dropped locally
            wanted = min(self.window * (self.blksize + 64), 4 << 20)
            if wanted > sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)

    def send_window(self, now: float) -> None:
        first = self.acked + 1
        end = min(self.acked + self.window, self.last)
        bs, content, send = self.blksize, self.content, self.sock.send
        self.sent = self.acked
        self.deadline = now + self.timeout
        for block in range(first, end + 1):
            off = (block - 1) * bs
            try:
                send(packet.data_header(block) + content[off : off + bs])
            except BlockingIOError:
                # send buffer full: the rest of the window counts as lost; the client's ACK of
                # what it got (RFC 7440) or the timer resends from there
                return
            self.sent = block

    def start(self, now: float) -> None:
        if self.oack:
            self.sock.send(self.oack)
            self.deadline = now + self.timeout
        else:
            self.send_window(now)

    def on_ack(self, block16: int, now: float) -> bool:
        """Handle an ACK; True when the transfer is complete."""
        if self.oack_pending:
            if block16 != 0:
                return False
            self.oack_pending = False
            self.retries = 0
            self.send_window(now)
            return False
        # Map the 16-bit number onto the outstanding range; block numbers roll over to 0 after
        # 65535, as curl, iPXE and tftp-hpa expect for files larger than 65535 blocks.
        absolute = self.acked + ((block16 - self.acked) & 0xFFFF)
        if absolute == self.acked or absolute > self.sent:
            # A duplicate ACK never triggers a resend (RFC 1350 "Sorcerer's Apprentice" bug); the
            # timer resends if the client really lost the window.
            return False
        self.acked = absolute
        self.retries = 0
        if absolute >= self.last:
            return True
        # RFC 7440: an ACK inside the window means "received up to here"; the next window starts
        # right after it, which is also how a lost block gets resent.
        self.send_window(now)
        return False

    def on_timeout(self, now: float) -> None:
        if self.oack_pending:
            self.sock.send(self.oack)
            self.deadline = now + self.timeout
        else:
            self.send_window(now)


class TftpServer:
    def __init__(
        self,
        root: Path,
        bind: str = "0.0.0.0",
        port: int = 69,
        *,
        generated: Mapping[str, Callable[[], bytes]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        busy_poll: float = busypoll.DEFAULT_WINDOW,
    ) -> None:
        self.files = FileStore(root, generated)
        self.spin = busypoll.SpinPolicy(busy_poll)
        self.timeout = timeout
        self.retries = retries
        self.family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET:
            # the destination address of each request, so a transfer answers from the address the
            # client talked to (a multi-homed appliance must not answer from another one)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind((bind, port))
        self.sock.setblocking(False)
        self.bind = bind
        self.port: int = self.sock.getsockname()[1]
        self.transfers: dict[int, Transfer] = {}
        self.mtus: dict[int, int] = {}
        # epoll directly: selectors' key objects cost a few µs per lock-step ACK (measured)
        self.epoll = select.epoll()

    # -- requests on the well-known port --------------------------------------------------------

    def _arrival(self, ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int]:
        """The address the request was sent to and the index of the interface it came in on."""
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= _PKTINFO.size:
                ifindex, _spec, addr = _PKTINFO.unpack_from(value)
                return socket.inet_ntoa(addr), ifindex
        return self.bind, 0

    def _max_blksize(self, ifindex: int) -> int:
        # Like dnsmasq: never grant a block larger than the arrival interface's MTU allows, or every
        # DATA packet is IP-fragmented, and PXE ROMs that cannot reassemble stall at the first block.
        mtu = self.mtus.get(ifindex)
        if mtu is None:
            mtu = interface_mtu(ifindex)
            self.mtus[ifindex] = mtu
        header = 20 + 8 + 4 if self.family == socket.AF_INET else 40 + 8 + 4
        return max(packet.MIN_BLKSIZE, min(mtu, 65535) - header)

    def _on_request(self, now: float) -> None:
        while True:
            try:
                data, ancdata, _flags, peer = self.sock.recvmsg(2048, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket; nothing to answer
                log.debug("request socket: %s", exc)
                continue
            try:
                request = packet.parse(data)
            except packet.MalformedPacket as exc:
                MALFORMED.inc()
                log.debug("malformed request from %s: %s", peer, exc)
                continue
            if not isinstance(request, packet.Request):
                # DATA/ACK to port 69 belongs to no transfer; RFC 1350 has no reply for it
                MALFORMED.inc()
                continue
            local, ifindex = self._arrival(ancdata)
            self._start(request, peer[:2], local, self._max_blksize(ifindex), now)

    def _reply_socket(self, local: str, peer: tuple[str, int]) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            addr = ipaddress.ip_address(local)
            bind_to = local if not (addr.is_multicast or local == "255.255.255.255") else self.bind
            sock.bind((bind_to, 0))
            sock.connect(peer)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _refuse(self, local: str, peer: tuple[str, int], code: int, message: str, result: str) -> None:
        REQUESTS.labels(result).inc()
        # a missing file is routine (iPXE probes for autoexec.ipxe); refusals are worth seeing
        log.log(
            logging.DEBUG if result == "not_found" else logging.INFO,
            "tftp %s %s: %s",
            peer[0],
            result,
            message,
        )
        try:
            sock = self._reply_socket(local, peer)
        except OSError as exc:
            log.warning("cannot answer %s: %s", peer, exc)
            return
        with contextlib.suppress(OSError):
            sock.send(packet.build_error(code, message))
        sock.close()

    def _start(
        self, request: packet.Request, peer: tuple[str, int], local: str, max_blk: int, now: float
    ) -> None:
        if request.opcode == packet.WRQ:
            self._refuse(local, peer, packet.ERR_ACCESS, "read-only server", "write")
            return
        try:
            content = self.files.read(request.filename)
        except Refused as exc:
            result = "not_found" if exc.code == packet.ERR_NOT_FOUND else "refused"
            self._refuse(local, peer, exc.code, exc.message, result)
            return
        if request.mode == "netascii":
            content = content.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        nego = packet.negotiate(request.options, len(content), max_blksize=max_blk)
        try:
            sock = self._reply_socket(local, peer)
        except OSError as exc:
            log.warning("cannot open a transfer socket for %s: %s", peer, exc)
            return
        transfer = Transfer(sock, peer, request.filename, content, nego, self.timeout)
        self.transfers[sock.fileno()] = transfer
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        log.debug("tftp %s RRQ %s %s", peer[0], request.filename, nego.oack)
        try:
            transfer.start(now)
        except OSError as exc:
            self._finish(transfer, "aborted", f"send failed: {exc}")

    # -- transfers ------------------------------------------------------------------------------

    def _finish(self, transfer: Transfer, result: str, why: str = "") -> None:
        fd = transfer.sock.fileno()
        if self.transfers.pop(fd, None) is None:
            return
        self.epoll.unregister(fd)
        transfer.sock.close()
        REQUESTS.labels(result).inc()
        if result == "ok":
            BYTES_SENT.inc(len(transfer.content))
            log.debug("tftp %s sent %s (%d bytes)", transfer.peer[0], transfer.name, len(transfer.content))
        else:
            log.info("tftp %s %s %s: %s", transfer.peer[0], transfer.name, result, why)

    def _on_transfer(self, transfer: Transfer, now: float) -> None:
        # One datagram per wake-up: in lock-step the next ACK cannot be there yet, and a second
        # recv would only raise BlockingIOError; epoll is level-triggered and calls again if more wait.
        # 2048, not 64 KiB: CPython allocates the whole buffer per call, and clients only send ACKs
        # and ERRORs (a longer datagram is cut, fails to parse and is counted as malformed).
        try:
            data = transfer.sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # ICMP port unreachable: the client went away
            self._finish(transfer, "aborted", str(exc))
            return
        if len(data) == 4 and data[1] == packet.ACK and data[0] == 0:
            block = (data[2] << 8) | data[3]
            sent = transfer.sent
            if transfer.window == 1 and sent and block == sent & 0xFFFF and sent < transfer.last:
                # Lock-step (RFC 1350, every curl/tftp-hpa/busybox transfer): the ACK of the one
                # block in flight; send the next one with no further calls (~1 µs less per block).
                bs = transfer.blksize
                off = sent * bs
                try:
                    transfer.sock.send(
                        _DATA_HEADER.pack(packet.DATA, (sent + 1) & 0xFFFF) + transfer.content[off : off + bs]
                    )
                except OSError as exc:
                    self._finish(transfer, "aborted", f"send failed: {exc}")
                    return
                transfer.acked = sent
                transfer.sent = sent + 1
                transfer.retries = 0
                transfer.deadline = now + transfer.timeout
                return
            try:
                done = transfer.on_ack(block, now)
            except OSError as exc:
                self._finish(transfer, "aborted", f"send failed: {exc}")
                return
            if done:
                self._finish(transfer, "ok")
            return
        try:
            pkt = packet.parse(data)
        except packet.MalformedPacket:
            MALFORMED.inc()
            return
        if isinstance(pkt, packet.Error):
            # clients abort with an ERROR, e.g. tsize probing (OVMF asks tsize, then aborts)
            self._finish(transfer, "client_error", f"{pkt.code} {pkt.message}")
            return
        MALFORMED.inc()

    def _check_timers(self, now: float) -> None:
        for transfer in list(self.transfers.values()):
            if now < transfer.deadline:
                continue
            transfer.retries += 1
            if transfer.retries > self.retries:
                with contextlib.suppress(OSError):
                    transfer.sock.send(packet.build_error(packet.ERR_UNDEFINED, "timed out"))
                self._finish(transfer, "timeout", f"no ACK after {self.retries} retransmissions")
                continue
            try:
                transfer.on_timeout(now)
            except OSError as exc:
                self._finish(transfer, "aborted", f"send failed: {exc}")

    def run(self, stop: threading.Event) -> None:
        listen_fd = self.sock.fileno()
        self.epoll.register(listen_fd, select.EPOLLIN)
        log.info("tftp serving %s on %s:%d", self.files.root, self.bind, self.port)
        next_scan = time.monotonic() + TICK
        poll, monotonic, on_transfer = self.epoll.poll, time.monotonic, self._on_transfer
        transfers = self.transfers
        spin, wait, spin_until = self.spin, busypoll.wait, 0.0
        try:
            while not stop.is_set():
                events = wait(poll, spin, spin_until, TICK)
                now = monotonic()
                for fd, _mask in events:
                    transfer = transfers.get(fd)
                    if transfer is not None:
                        on_transfer(transfer, now)
                    elif fd == listen_fd:
                        self._on_request(now)
                # the next ACK of a transfer in flight is one round trip away: poll for it before sleeping
                spin_until = spin.armed(monotonic()) if events and transfers else 0.0
                if now >= next_scan:
                    self._check_timers(now)
                    next_scan = now + TICK
        finally:
            self.close()

    def close(self) -> None:
        for transfer in list(self.transfers.values()):
            self._finish(transfer, "aborted", "server stopping")
        self.epoll.close()
        self.sock.close()


def chain_script(settings: Settings) -> bytes:
    """`kiln.ipxe`: for clients whose firmware can only TFTP a script, hand over to the HTTP boot URL."""
    url = f"http://{settings.advertise_address}:{settings.web_port}/boot/ipxe?mac="
    return ("#!ipxe\nchain " + url + "${net0/mac} || shell\n").encode()


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Entry point `kiln.services:tftp`: serve settings.tftp_root until `stop` is set."""
    del db  # TFTP serves files only; boot decisions are made by DHCP and the web
    install_loaders(settings.tftp_root)
    script = chain_script(settings)
    server = TftpServer(
        settings.tftp_root,
        settings.tftp_bind,
        settings.tftp_port,
        generated={"kiln.ipxe": lambda: script},
        busy_poll=settings.tftp_busy_poll_us / 1e6,
    )
    server.run(stop)
