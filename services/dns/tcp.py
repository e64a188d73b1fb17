"""DNS over TCP (RFC 7766): length-prefixed queries on non-blocking connections, on the caller's epoll.

Answers may come back later from another thread (a query forwarded upstream over TCP): `post` queues
them and wakes the loop, which sends them in `drain`.
"""

from __future__ import annotations

import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from services.dns import packet

MAX_CLIENTS = 256
IDLE_SECONDS = 10.0


class TcpClient:
    __slots__ = ("inbuf", "last", "outbuf", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: Any, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = now


# (query, client's address, connection) -> the answer now, or None (dropped, or answered later via post)
Answerer = Callable[[bytes, Any, TcpClient], bytes | None]


class TcpFront:
    def __init__(
        self, listener: socket.socket, epoll: select.epoll, answer: Answerer, wake: socket.socket
    ) -> None:
        self.listener = listener
        self.epoll = epoll
        self.answer = answer
        self.wake = wake
        self.clients: dict[int, TcpClient] = {}
        self.inbox: deque[tuple[TcpClient, bytes | None, bytes]] = deque()

    def post(self, client: TcpClient, reply: bytes | None, query: bytes) -> None:
        """From any thread: hand an answer (None: SERVFAIL) for `client` to the loop."""
        self.inbox.append((client, reply, query))
        self.wake.send(b"t")

    def accept(self, now: float) -> None:
        while True:
            try:
                sock, peer = self.listener.accept()
            except OSError:  # BlockingIOError: no more pending connections
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            self.clients[sock.fileno()] = TcpClient(sock, peer, now)
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _close(self, client: TcpClient) -> None:
        if self.clients.pop(client.sock.fileno(), None) is not None:
            self.epoll.unregister(client.sock.fileno())
            client.sock.close()

    def _open(self, client: TcpClient) -> bool:
        return client.sock.fileno() in self.clients

    def _send(self, client: TcpClient, reply: bytes | None = None) -> None:
        if reply is not None:
            client.outbuf += struct.pack("!H", len(reply)) + reply
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(client)
            return
        del client.outbuf[:sent]
        mask = select.EPOLLIN | (select.EPOLLOUT if client.outbuf else 0)
        self.epoll.modify(client.sock.fileno(), mask)

    def on_event(self, client: TcpClient, mask: int, now: float) -> None:
        client.last = now
        if mask & select.EPOLLOUT:
            self._send(client)
            if not self._open(client):
                return
        if not mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            chunk = client.sock.recv(65537)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(client)
            return
        client.inbuf += chunk
        while len(client.inbuf) >= 2:
            size = (client.inbuf[0] << 8) | client.inbuf[1]
            if len(client.inbuf) < 2 + size:
                break
            data = bytes(client.inbuf[2 : 2 + size])
            del client.inbuf[: 2 + size]
            reply = self.answer(data, client.peer, client)
            if reply is not None:
                self._send(client, reply)
                if not self._open(client):
                    return

    def drain(self) -> None:
        while self.inbox:
            client, reply, query = self.inbox.popleft()
            if not self._open(client):
                continue
            if reply is None:
                # the query parsed once already; keep its question so the client can match the answer
                reply = packet.header_reply(query, packet.parse_query(query), packet.RCODE_SERVFAIL)
            self._send(client, reply)

    def expire(self, now: float) -> None:
        for client in [c for c in self.clients.values() if now - c.last > IDLE_SECONDS]:
            self._close(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
