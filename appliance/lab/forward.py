"""A small TCP forwarder: the host's 127.0.0.1:<port> to Kiln's web inside the lab namespace.

The web listens inside the namespace (so machines on the lab bridge reach it at the bridge address);
a browser on the host connects to 127.0.0.1, and this relays each connection over the veth. Two
threads per connection: a lab has a handful of browser connections, not thousands.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from appliance.lab.network import LabError

log = logging.getLogger(__name__)


class TcpForwarder:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(listen)
        except OSError as exc:
            self._sock.close()
            raise LabError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror} (use --port)") from exc
        self._sock.listen(64)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._thread = threading.Thread(target=self._accept_loop, name="kiln-lab-forward", daemon=True)

    def start(self) -> TcpForwarder:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # the listening socket was closed by stop()
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError as exc:
            log.warning("lab forwarder: %s:%d unreachable: %s", *self.target, exc)
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # half-close: the other direction may still be sending (HTTP responses after the request)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            self._forget(src, dst)

    def _forget(self, src: socket.socket, dst: socket.socket) -> None:
        with self._lock:
            # the second pump of a pair to finish closes both sockets
            if src in self._conns and dst in self._conns:
                self._conns.discard(src)
                return
            for sock in (src, dst):
                self._conns.discard(sock)
                sock.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._conns.clear()
        if self._thread.ident is not None:  # stop() also cleans up a forwarder that never started
            self._thread.join(timeout=5)
