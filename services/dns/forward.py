"""Forwarding of queries outside Kiln's zones to the configured upstream resolvers.

UDP queries are relayed on the responder's own loop with a fresh random id per query (the
client's id is restored on the way back); an answer is accepted only from the upstream that was
asked and only with the same question. TCP queries go to the upstream over TCP in a small thread
pool, since a TCP answer may be larger than any UDP one.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 1.5  # per upstream; then the next one, then SERVFAIL
MAX_PENDING = 4096


def parse_upstream(text: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:5353`, `::1`, `[::1]:5353` → (address, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


@dataclass
class Pending:
    client: Any  # (addr, port) for UDP clients
    client_id: bytes
    query: bytes  # with our id
    question: bytes  # data[12:question_end]: the reply must carry the same
    upstream: int
    deadline: float


class Forwarder:
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self.sockets: dict[int, socket.socket] = {}
        for family in {socket.AF_INET6 if ":" in host else socket.AF_INET for host, _ in upstreams}:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self.sockets[family] = sock
        self.pending: dict[int, Pending] = {}
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns-tcp-forward")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for sock in self.sockets.values():
            sock.close()

    def _send(self, entry: Pending) -> None:
        host, port = self.upstreams[entry.upstream]
        sock = self.sockets[socket.AF_INET6 if ":" in host else socket.AF_INET]
        try:
            sock.sendto(entry.query, (host, port))
        except OSError as exc:
            log.warning("upstream %s:%d: %s", host, port, exc)

    def forward_udp(self, data: bytes, question_end: int, client: Any, now: float) -> bool:
        """Relay a UDP query; False when nothing can be relayed (no upstream, too many in flight)."""
        if not self.upstreams or len(self.pending) >= MAX_PENDING:
            return False
        new_id = secrets.randbits(16)
        while new_id in self.pending:
            new_id = secrets.randbits(16)
        entry = Pending(
            client,
            data[:2],
            struct.pack("!H", new_id) + data[2:],
            data[12:question_end],
            0,
            now + UPSTREAM_TIMEOUT,
        )
        self.pending[new_id] = entry
        self._send(entry)
        return True

    def on_reply(self, data: bytes, source: Any) -> tuple[Any, bytes] | None:
        """An upstream's reply → (client, reply with the client's id), or None to drop it."""
        if len(data) < 12:
            return None
        entry = self.pending.get((data[0] << 8) | data[1])
        if entry is None:
            return None
        host, port = self.upstreams[entry.upstream]
        if (source[0], source[1]) != (host, port) or data[12 : 12 + len(entry.question)] != entry.question:
            return None  # not the upstream we asked, or not our question: a spoofing attempt
        del self.pending[(data[0] << 8) | data[1]]
        return entry.client, entry.client_id + data[2:]

    def expire(self, now: float) -> list[Pending]:
        """Move timed-out queries to the next upstream; those out of upstreams are returned."""
        failed = []
        for qid, entry in list(self.pending.items()):
            if now < entry.deadline:
                continue
            if entry.upstream + 1 < len(self.upstreams):
                entry.upstream += 1
                entry.deadline = now + UPSTREAM_TIMEOUT
                self._send(entry)
            else:
                del self.pending[qid]
                failed.append(entry)
        return failed

    def forward_tcp(self, data: bytes, done: Callable[[bytes | None], None]) -> bool:
        if not self.upstreams:
            return False
        self.pool.submit(self._tcp_query, data, done)
        return True

    def _tcp_query(self, data: bytes, done: Callable[[bytes | None], None]) -> None:
        for host, port in self.upstreams:
            try:
                with socket.create_connection((host, port), timeout=UPSTREAM_TIMEOUT) as sock:
                    sock.sendall(struct.pack("!H", len(data)) + data)
                    size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
                    reply = _recv_exactly(sock, size)
            except (OSError, ValueError) as exc:
                log.info("upstream %s:%d over TCP: %s", host, port, exc)
                continue
            if reply[:2] == data[:2]:
                done(reply)
                return
        done(None)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    deadline = time.monotonic() + UPSTREAM_TIMEOUT
    while len(chunks) < size:
        if time.monotonic() > deadline:
            raise ValueError("upstream too slow")
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ValueError("upstream closed the connection")
        chunks += chunk
    return bytes(chunks)
