"""kiln-dhcp: sockets on the configured interfaces, group commit of leases, rogue server watch.

`serve(settings, db, stop)` is the entry point (`kiln serve`, systemd). The hot path is: recvfrom →
`packet.parse` → `Responder.handle` (in-memory lookups) → sendto; an ACK goes through `GroupCommit`,
which writes up to 64 leases in one fsync'd transaction (or whatever arrived within ~2 ms) and sends
their ACKs only once that transaction is committed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time

from prometheus_client import Counter, Histogram

from appliance.config import Settings
from appliance.db import Database
from appliance.errors import ConfigError
from appliance.metrics import ERRORS, REQUESTS
from services.dhcp.backend import DatabaseBackend
from services.dhcp.packet import MAX_PACKET, MESSAGE_NAMES, MalformedPacket, parse_fields
from services.dhcp.responder import Interface, Outgoing, Responder, ResponderConfig
from services.dhcp.rogue import PROBE_MAC, RogueWatch

log = logging.getLogger(__name__)

BATCH_MAX = 64
BATCH_WAIT = 0.002
PXE_PORT = 4011
REFRESH_SECONDS = 1.0
_SIOCGIFADDR = 0x8915
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_SO_RCVBUFFORCE = 33

MALFORMED = ERRORS.labels("dhcp", "malformed")
COMMIT_FAILED = ERRORS.labels("dhcp", "commit")
HANDLER_FAILED = ERRORS.labels("dhcp", "exception")
SENT = {kind: REQUESTS.labels("dhcp", name.lower()) for kind, name in MESSAGE_NAMES.items()}
COMMITTED = Counter("kiln_dhcp_leases_committed_total", "Lease rows written by group commit")
COMMIT_SECONDS = Histogram(
    "kiln_dhcp_commit_seconds",
    "Time to write and fsync one batch of leases",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)


def interface_address(sock: socket.socket, ifname: str) -> int:
    """The primary IPv4 address of `ifname`; it is the server identifier on that segment."""
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
    except OSError as exc:
        raise ConfigError(
            f"dhcp interface '{ifname}' has no IPv4 address or does not exist: {exc}", field="dhcp_interfaces"
        ) from exc
    return int.from_bytes(raw[20:24], "big")


def open_socket(ifname: str, port: int) -> socket.socket:
    """A UDP socket that sees only `ifname`'s traffic (SO_BINDTODEVICE), never another interface's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, ifname.encode())
        try:
            # bursts of thousands of DISCOVERs must queue, not drop, while a batch commits
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve DHCP on '{ifname}' port {port}: {exc}", field="dhcp_interfaces"
        ) from exc
    return sock


class GroupCommit:
    """Leases are written in batches; each batch's ACKs leave only after its transaction commits.

    The committer thread runs only the transaction (SQLite and fsync release the GIL); rows are
    formatted by the receive thread in `submit()` and the ACKs are sent by the receive thread in
    `deliver()`, woken through a pipe. A committer that sent the ACKs itself would wait for the GIL
    after every sendto while the receive loop is busy, and fall behind exactly under load.
    """

    def __init__(self, backend: DatabaseBackend) -> None:
        self.backend = backend
        self._pending: list[tuple[Outgoing, socket.socket, tuple[object, ...]]] = []
        self._first = 0.0
        self._cond = threading.Condition()
        self._ready: collections.deque[list[tuple[Outgoing, socket.socket, tuple[object, ...]]]] = (
            collections.deque()
        )
        self.batches = self.rows = 0
        self.seconds = 0.0
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def submit(self, outgoing: Outgoing, sock: socket.socket) -> None:
        assert outgoing.lease is not None
        row = self.backend.row(outgoing.lease)
        with self._cond:
            self._pending.append((outgoing, sock, row))
            size = len(self._pending)
            if size == 1:
                self._first = time.monotonic()
                self._cond.notify()
            elif size == BATCH_MAX:
                self._cond.notify()

    def run(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                while not self._pending and not stop.is_set():
                    self._cond.wait(0.2)
                if not self._pending:
                    return
                deadline = self._first + BATCH_WAIT
                while len(self._pending) < BATCH_MAX and not stop.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._pending[:BATCH_MAX]
                del self._pending[:BATCH_MAX]
                if self._pending:
                    self._first = time.monotonic()
            self._write(batch)

    def _write(self, batch: list[tuple[Outgoing, socket.socket, tuple[object, ...]]]) -> None:
        started = time.monotonic()
        try:
            self.backend.commit_rows([row for _out, _sock, row in batch])
            took = time.monotonic() - started
            COMMIT_SECONDS.observe(took)
            self.batches += 1
            self.rows += len(batch)
            self.seconds += took
        except Exception:
            records = [out.lease for out, _sock, _row in batch if out.lease is not None]
            COMMIT_FAILED.inc(len(records))
            log.exception("dhcp: could not commit %d leases; their ACKs are dropped", len(records))
            self.backend.undo(records)
            return
        COMMITTED.inc(len(batch))
        self._ready.append(batch)
        # a full pipe means the receive thread has wake-ups pending already
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        for out, _sock, _row in batch:
            if out.lease is not None and out.lease.state == "declined":
                self._declined(out)

    def deliver(self) -> None:
        """Send the ACKs of committed batches (receive thread)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_fd, 4096)
        while self._ready:
            for out, sock, _row in self._ready.popleft():
                if out.data is None:
                    continue
                try:
                    sock.sendto(out.data, out.destination)
                    SENT[out.kind].inc()
                except OSError as exc:
                    log.warning("dhcp: sending to %s failed: %s", out.destination, exc)

    def close(self) -> None:
        if self.batches:
            log.info(
                "dhcp: committed %d leases in %d batches (%.1f per batch, %.2f ms per commit)",
                self.rows,
                self.batches,
                self.rows / self.batches,
                1000 * self.seconds / self.batches,
            )
        os.close(self.wake_fd)
        os.close(self._wake_w)

    def _declined(self, out: Outgoing) -> None:
        assert out.lease is not None
        address = str(ipaddress.IPv4Address(out.lease.address))
        try:
            self.backend.record_event(
                "dhcp.decline",
                f"{out.lease.mac} declined {address}: another host answers for it",
                {"mac": out.lease.mac, "address": address, "network_id": out.lease.network_id},
            )
        except Exception:
            log.exception("dhcp: could not record the decline of %s", address)


class DhcpServer:
    def __init__(self, settings: Settings, backend: DatabaseBackend, responder: Responder) -> None:
        self.settings = settings
        self.backend = backend
        self.responder = responder
        self.commit = GroupCommit(backend)
        self.selector = selectors.DefaultSelector()
        self.interfaces: list[tuple[Interface, socket.socket]] = []

    def open(self) -> None:
        ports = [self.settings.dhcp_port] + ([PXE_PORT] if self.settings.dhcp_proxy else [])
        for ifname in self.settings.dhcp_interfaces:
            for port in ports:
                sock = open_socket(ifname, port)
                iface = Interface(ifname, interface_address(sock, ifname))
                self.selector.register(sock, selectors.EVENT_READ, (iface, port == PXE_PORT))
                if port != PXE_PORT:
                    self.interfaces.append((iface, sock))
            log.info("dhcp: serving %s (%s)", ifname, ipaddress.IPv4Address(self.interfaces[-1][0].address))

    def close(self) -> None:
        self.commit.deliver()  # ACKs committed during shutdown
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            if key.data is not None:
                key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()
        self.commit.close()

    def _on_packet(
        self, data: bytes, source: tuple[str, int], sock: socket.socket, iface: Interface, pxe: bool
    ) -> None:
        try:
            header, opts = parse_fields(data)
        except MalformedPacket as exc:
            MALFORMED.inc()
            log.debug("dhcp: dropped a malformed packet from %s on %s: %s", source[0], iface.name, exc)
            return
        if header[11][: header[2]] == PROBE_MAC:
            return  # our own rogue-server probe, looped back
        out = self.responder.answer(header, opts, iface, time.time())
        if out is None:
            return
        if pxe and out.data is not None:
            out.destination = source  # proxyDHCP on 4011 answers where the client asked from
        if out.lease is not None:
            self.commit.submit(out, sock)
        elif out.data is not None:
            sock.sendto(out.data, out.destination)
            SENT[out.kind].inc()

    def run(self, stop: threading.Event) -> None:
        self.selector.register(self.commit.wake_fd, selectors.EVENT_READ, None)
        select = self.selector.select
        on_packet = self._on_packet
        while not stop.is_set():
            for key, _events in select(0.25):
                if key.data is None:
                    self.commit.deliver()
                    continue
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                iface, pxe = key.data
                recvfrom = sock.recvfrom
                for _ in range(256):  # drain, but give the other interfaces a turn
                    try:
                        # one byte more than any DHCP message, so an oversized one is seen whole and refused
                        data, source = recvfrom(MAX_PACKET + 1)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        log.warning("dhcp: receive on %s failed: %s", iface.name, exc)
                        break
                    try:
                        on_packet(data, source, sock, iface, pxe)
                    except Exception:
                        HANDLER_FAILED.inc()
                        log.exception("dhcp: failed to answer a packet on %s", iface.name)


def _housekeeping(backend: DatabaseBackend, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_SECONDS):
        try:
            backend.refresh()
            backend.expire_offers(time.time())
            backend.writer.checkpoint()
        except Exception:
            log.exception("dhcp: refreshing the index failed; answering from the previous one")


def _advertise(settings: Settings) -> str | None:
    try:
        address = ipaddress.IPv4Address(settings.advertise_address)
    except ValueError:
        return None
    # the default 127.0.0.1 means "not set": each segment then gets its own interface address
    return None if address.is_loopback else str(address)


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Run the DHCP server until `stop` is set."""
    if not settings.dhcp_interfaces:
        # DESIGN §10: nothing serves DHCP until the operator has chosen the interface
        log.warning("dhcp: no interface configured (dhcp.interfaces); not serving")
        stop.wait()
        return
    backend = DatabaseBackend(db, discovery=settings.dhcp_discovery)
    backend.start()
    # everything loaded so far (SQLAlchemy, the index, the leases) lives as long as the process: moving
    # it out of the collector's view keeps full collections from stalling the receive loop for ms
    gc.freeze()
    config = ResponderConfig(
        advertise=_advertise(settings),
        web_port=settings.web_port,
        uefi_loader=settings.dhcp_uefi_loader,
        lease_seconds=settings.dhcp_lease_seconds,
        domain=settings.admin_domain,
        proxy=settings.dhcp_proxy,
    )
    server = DhcpServer(settings, backend, Responder(backend, config))
    server.open()
    # in proxyDHCP mode another server owning the addresses is the point, not a rogue
    rogue = RogueWatch([] if settings.dhcp_proxy else server.interfaces, backend)
    rogue.open()
    # the helpers stop after the receive loop, so ACKs already queued are still committed and sent
    halt = threading.Event()
    threads = [
        threading.Thread(target=server.commit.run, args=(halt,), name="dhcp-commit", daemon=True),
        threading.Thread(target=_housekeeping, args=(backend, halt), name="dhcp-refresh", daemon=True),
        threading.Thread(target=rogue.run, args=(halt,), name="dhcp-rogue", daemon=True),
    ]
    for thread in threads:
        thread.start()
    log.info("dhcp: ready (%s mode)", "proxyDHCP" if settings.dhcp_proxy else "full")
    try:
        server.run(stop)
    finally:
        halt.set()
        for thread in threads:
            thread.join(timeout=5)
        server.close()
        rogue.close()
        backend.close()
