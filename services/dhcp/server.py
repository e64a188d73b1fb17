"""kiln-dhcp: sockets on the configured interfaces, group commit of leases, rogue server watch.

`serve(settings, db, stop)` is the entry point (`kiln serve`, systemd). The hot path is: recvfrom →
`packet.parse_fields` → `Responder.answer` (in-memory lookups) → sendto; an ACK goes through
`GroupCommit`, which writes up to 64 leases in one fsync'd transaction (whatever arrived within ~2 ms
of the first) from the same loop and sends their ACKs only once that transaction is committed.
"""

from __future__ import annotations

import fcntl
import gc
import ipaddress
import logging
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
# How long a batch waits for more leases after its first one: a lone client's ACK leaves ~2 ms after its
# REQUEST; under load whatever the socket queued during the previous commit joins the next batch.
BATCH_WAIT = 0.0005
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
    """Leases are written in batches by the receive loop itself; each batch's ACKs leave only after its
    transaction commits.

    The loop calls `submit()` for every lease and `flush()` once the batch is due: `BATCH_MAX` leases, or
    `BATCH_WAIT` after the first one. `flush()` writes the batch in one fsync'd transaction and then sends
    its ACKs; packets that arrive meanwhile wait in the socket's 8 MiB buffer and are answered right
    after. One thread on purpose: a committer thread had to take the GIL back from the busy receive loop
    several times per batch, each time waiting up to the 5 ms switch interval, and its ACKs then left in
    bursts that overflowed the clients' buffers. Inline, the same benchmark spent 15-20 % less CPU per
    lease and sustained more (DESIGN-NOTES.md, "DHCP: group commit in the receive loop").
    """

    def __init__(self, backend: DatabaseBackend, sent: Sent) -> None:
        self.backend = backend
        self.sent = sent
        self._row = backend.writer.row
        self.pending: list[tuple[Outgoing, socket.socket, tuple[object, ...]]] = []
        self.deadline = 0.0  # monotonic time the pending batch is due
        self.batches = self.rows = 0
        self.seconds = 0.0

    def submit(self, outgoing: Outgoing, sock: socket.socket) -> None:
        assert outgoing.lease is not None
        pending = self.pending
        pending.append((outgoing, sock, self._row(outgoing.lease)))
        if len(pending) == 1:
            self.deadline = time.monotonic() + BATCH_WAIT

    def flush(self) -> None:
        """Commit the first `BATCH_MAX` pending leases and send their ACKs; the rest is due at once."""
        pending = self.pending
        batch = pending[:BATCH_MAX]
        del pending[:BATCH_MAX]
        if self._write(batch):
            counts = self.sent.counts
            for out, sock, _row in batch:
                if out.data is None:
                    continue
                try:
                    sock.sendto(out.data, out.destination)
                    counts[out.kind] += 1
                except OSError as exc:
                    log.warning("dhcp: sending to %s failed: %s", out.destination, exc)

    def _write(self, batch: list[tuple[Outgoing, socket.socket, tuple[object, ...]]]) -> bool:
        started = time.monotonic()
        try:
            self.backend.commit_rows([row for _out, _sock, row in batch])
        except Exception:
            records = [out.lease for out, _sock, _row in batch if out.lease is not None]
            COMMIT_FAILED.inc(len(records))
            log.exception("dhcp: could not commit %d leases; their ACKs are dropped", len(records))
            self.backend.undo(records)
            return False
        took = time.monotonic() - started
        COMMIT_SECONDS.observe(took)
        COMMITTED.inc(len(batch))
        self.batches += 1
        self.rows += len(batch)
        self.seconds += took
        for out, _sock, row in batch:
            if row[6] == "declined":
                self._declined(out)
        return True

    def close(self) -> None:
        while self.pending:  # leases answered before the stop still get committed and ACKed
            self.flush()
        if self.batches:
            log.info(
                "dhcp: committed %d leases in %d batches (%.1f per batch, %.2f ms per commit)",
                self.rows,
                self.batches,
                self.rows / self.batches,
                1000 * self.seconds / self.batches,
            )

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
        self.commit.close()  # leases answered before the stop are committed and ACKed
        self.sent.flush()
        for sock, _iface, _pxe in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.epoll.close()

    def run(self, stop: threading.Event) -> None:
        """The receive loop. Everything a packet goes through is inlined here, on purpose: this runs for
        every packet, and each Python call it saves is CPU the load generator or the next commit gets."""
        poll = self.epoll.poll
        sockets = self.sockets
        answer = self.responder.answer
        submit = self.commit.submit
        counts = self.sent.counts
        clock, monotonic = time.time, time.monotonic
        commit = self.commit
        pending = commit.pending
        while not stop.is_set():
            for fd, _events in poll(max(0.0, commit.deadline - monotonic()) if pending else 0.25):
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
                            # checked per lease, not per drain: a busy socket would stretch the batch
                            # and its burst of ACKs past what the clients' buffers take
                            if len(pending) >= BATCH_MAX or monotonic() >= commit.deadline:
                                commit.flush()
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
            if pending and (len(pending) >= BATCH_MAX or monotonic() >= commit.deadline):
                commit.flush()


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
    # the helpers stop after the receive loop (which commits and ACKs what it answered before the stop)
    halt = threading.Event()
    threads = [
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
