"""A Kiln TFTP server on loopback for the TFTP tests, and a small client built on the packet module.

The client exists because no Debian client does RFC 7440 windowsize or lets a test drop an ACK.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.tftp import packet
from services.tftp.files import install_loaders
from services.tftp.server import TftpServer


@dataclass
class RunningTftp:
    server: TftpServer
    root: Path
    port: int
    files: dict[str, bytes]

    def url(self, name: str) -> str:
        return f"tftp://127.0.0.1:{self.port}/{name}"

    def wait_idle(self, deadline_s: float = 5.0) -> None:
        """Poll until the server holds no transfer (they are finished on the loop thread)."""
        end = time.monotonic() + deadline_s
        while self.server.transfers and time.monotonic() < end:
            time.sleep(0.01)
        assert not self.server.transfers, "transfers still open"


def start_server(
    root: Path, bind: str = "127.0.0.1", **kwargs: float
) -> tuple[TftpServer, threading.Event, threading.Thread]:
    server = TftpServer(root, bind, 0, generated={"gen/hello.ipxe": lambda: b"#!ipxe\necho hi\n"}, **kwargs)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), name="tftp-test", daemon=True)
    thread.start()
    return server, stop, thread


def running_tftp(tmp_path: Path) -> Iterator[RunningTftp]:
    """Body of each TFTP test module's `tftp` fixture: a server with the iPXE loaders and test files."""
    root = tmp_path / "tftp"
    install_loaders(root)
    files = {name: (root / name).read_bytes() for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi")}
    files["big.bin"] = os.urandom(3_000_000 + 77)
    files["exact.bin"] = os.urandom(1468 * 40)  # a multiple of the block size: ends with an empty block
    files["empty.bin"] = b""
    (root / "sub").mkdir()
    files["sub/nested.txt"] = b"nested file\n"
    for name, content in files.items():
        if not (root / name).exists():
            (root / name).write_bytes(content)
    server, stop, thread = start_server(root, timeout=0.3, retries=3)
    try:
        yield RunningTftp(server, root, server.port, files)
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


class RawClient:
    """A TFTP client that does exactly what a test tells it to, one packet at a time."""

    def __init__(self, port: int, sock: socket.socket | None = None, server: str = "127.0.0.1") -> None:
        self.server = (server, port)
        self.sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.peer: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def request(self, raw: bytes) -> None:
        self.sock.sendto(raw, self.server)

    def recv(self, timeout: float = 3) -> packet.Packet:
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(70000)
        if self.peer is None:
            self.peer = addr
        assert addr == self.peer, "answer from a second TID"
        return packet.parse(data)

    def ack(self, block: int) -> None:
        assert self.peer is not None
        self.sock.sendto(packet.build_ack(block), self.peer)

    def send_to_transfer(self, raw: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(raw, self.peer)
