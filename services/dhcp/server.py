"""kiln-dhcp: sockets on the configured interfaces, group commit of leases, rogue server watch.

`serve(settings, db, stop)` is the entry point (`kiln serve`, systemd). The hot path is: recvfrom →
`packet.parse_fields` → `Responder.answer` (in-memory lookups) → sendto; an ACK goes through
`GroupCommit`, which writes up to 64 leases in one fsync'd transaction (whatever arrived within ~2 ms
of the first, ~4 ms while leases keep coming) and sends their ACKs only once that transaction is
committed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import select
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
# How long a batch waits for more leases after its first one: short when the committer was idle (a lone
# client's ACK leaves ~2 ms after its REQUEST), longer while leases keep coming (the previous commit
# ended with leases already waiting), so that a busy server spends each fsync on more leases.
BATCH_WAIT = 0.002
BATCH_WAIT_BUSY = 0.004
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


class Sent:
    """Replies sent, per message type: plain integers on the hot path, added to the prometheus counters
    (`kiln_requests_total{service="dhcp"}`) by the housekeeping thread every second and at shutdown.

    A `Counter.inc()` per packet takes a lock and costs more than answering some packets; only the
    receive thread writes `counts`, only `flush()` writes `flushed`.
    """

    def __init__(self) -> None:
        self.counts = [0] * 19
        self._flushed = [0] * 19

    def flush(self) -> None:
        counts = self.counts
        for kind, counter in SENT.items():
            value = counts[kind]
            if value != self._flushed[kind]:
                counter.inc(value - self._flushed[kind])
                self._flushed[kind] = value


class GroupCommit:
    """Leases are written in batches; each batch's ACKs leave only after its transaction commits.

    The committer thread runs only the transaction (SQLite and fsync release the GIL); rows are
    formatted by the receive thread in `submit()` and the ACKs are sent by the receive thread in
    `deliver()`, woken through an eventfd. A committer that sent the ACKs itself would wait for the GIL
    after every sendto while the receive loop is busy, and fall behind exactly under load.

    No lock and no condition variable: `submit()` only appends to a list and the committer takes
    slices off its front (each one step under the GIL). The committer sleeps out the batch window
    (~2 ms after the batch's first lease) and needs a wake-up only when it went idle with nothing
    pending; that is one eventfd write per idle period instead of a notify per batch.
    """

    def __init__(self, backend: DatabaseBackend, sent: Sent) -> None:
        self.backend = backend
        self.sent = sent
        self._row = backend.writer.row
        self._pending: list[tuple[Outgoing, socket.socket, tuple[object, ...]]] = []
        self._first = 0.0
        self._idle = False
        self._ready: collections.deque[list[tuple[Outgoing, socket.socket, tuple[object, ...]]]] = (
            collections.deque()
        )
        self.batches = self.rows = 0
        self.seconds = 0.0
        self._work_fd = os.eventfd(0, os.EFD_NONBLOCK)  # receive thread -> idle committer
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK)  # committer -> receive thread: ACKs to send

    def submit(self, outgoing: Outgoing, sock: socket.socket) -> None:
        assert outgoing.lease is not None
        pending = self._pending
        pending.append((outgoing, sock, self._row(outgoing.lease)))
        if len(pending) == 1:
            self._first = time.monotonic()
            if self._idle:
                self._idle = False
                os.eventfd_write(self._work_fd, 1)

    def run(self, stop: threading.Event) -> None:
        pending = self._pending
        poll = select.poll()
        poll.register(self._work_fd, select.POLLIN)
        wait = BATCH_WAIT
        while True:
            if not pending:
                wait = BATCH_WAIT
                self._idle = True
                # checked again after saying so: an ACK submitted in between must not wait for the timeout
                if not pending:
                    poll.poll(200)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._work_fd)
                self._idle = False
                if not pending:
                    if stop.is_set():
                        return
                    continue
            remaining = self._first + wait - time.monotonic()
            if remaining > 0 and not stop.is_set():
                time.sleep(remaining)
            # slicing and deleting the front are each one step under the GIL; appends go to the end
            batch = pending[:BATCH_MAX]
            del pending[:BATCH_MAX]
            if pending:
                self._first = time.monotonic()
            self._write(batch)
            if pending:
                wait = BATCH_WAIT_BUSY

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
        os.eventfd_write(self.wake_fd, 1)
        for out, _sock, row in batch:
            if row[6] == "declined":
                self._declined(out)

    def deliver(self) -> None:
        """Send the ACKs of committed batches (receive thread)."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wake_fd)
        counts = self.sent.counts
        while self._ready:
            for out, sock, _row in self._ready.popleft():
                if out.data is None:
                    continue
                try:
                    sock.sendto(out.data, out.destination)
                    counts[out.kind] += 1
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
        os.close(self._work_fd)

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
        self.sent = Sent()
        self.commit = GroupCommit(backend, self.sent)
        self.epoll = select.epoll()
        # fd -> (socket, interface, is the proxyDHCP port)
        self.sockets: dict[int, tuple[socket.socket, Interface, bool]] = {}
        self.interfaces: list[tuple[Interface, socket.socket]] = []

    def open(self) -> None:
        ports = [self.settings.dhcp_port] + ([PXE_PORT] if self.settings.dhcp_proxy else [])
        for ifname in self.settings.dhcp_interfaces:
            for port in ports:
                sock = open_socket(ifname, port)
                iface = Interface(ifname, interface_address(sock, ifname))
                self.sockets[sock.fileno()] = (sock, iface, port == PXE_PORT)
                self.epoll.register(sock.fileno(), select.EPOLLIN)
                if port != PXE_PORT:
                    self.interfaces.append((iface, sock))
            log.info("dhcp: serving %s (%s)", ifname, ipaddress.IPv4Address(self.interfaces[-1][0].address))

    def close(self) -> None:
        self.commit.deliver()  # ACKs committed during shutdown
        self.sent.flush()
        for sock, _iface, _pxe in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.epoll.close()
        self.commit.close()

    def run(self, stop: threading.Event) -> None:
        """The receive loop. Everything a packet goes through is inlined here, on purpose: this runs for
        every packet, and each Python call it saves is CPU the load generator or the committer gets."""
        wake_fd = self.commit.wake_fd
        self.epoll.register(wake_fd, select.EPOLLIN)
        poll = self.epoll.poll
        sockets = self.sockets
        answer = self.responder.answer
        submit = self.commit.submit
        counts = self.sent.counts
        clock = time.time
        while not stop.is_set():
            for fd, _events in poll(0.25):
                if fd == wake_fd:
                    self.commit.deliver()
                    continue
                sock, iface, pxe = sockets[fd]
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
                        header, opts = parse_fields(data)
                        if header[11][: header[2]] == PROBE_MAC:
                            continue  # our own rogue-server probe, looped back
                        out = answer(header, opts, iface, clock())
                        if out is None:
                            continue
                        if pxe and out.data is not None:
                            out.destination = source  # proxyDHCP on 4011 answers where the client asked
                        if out.lease is not None:
                            submit(out, sock)
                        elif out.data is not None:
                            sock.sendto(out.data, out.destination)
                            counts[out.kind] += 1
                    except MalformedPacket as exc:
                        MALFORMED.inc()
                        log.debug(
                            "dhcp: dropped a malformed packet from %s on %s: %s", source[0], iface.name, exc
                        )
                    except Exception:
                        HANDLER_FAILED.inc()
                        log.exception("dhcp: failed to answer a packet on %s", iface.name)


def _housekeeping(backend: DatabaseBackend, sent: Sent, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_SECONDS):
        sent.flush()
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
        threading.Thread(
            target=_housekeeping, args=(backend, server.sent, halt), name="dhcp-refresh", daemon=True
        ),
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
