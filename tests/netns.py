"""Network namespaces, veth pairs and bridges for tests that talk to real network peers.

Everything here is created under names unique to this process (pid + counter) and removed by
`Namespace.delete()`; use it from a fixture with a finalizer:

    ns = Namespace.create("srv")           # "srv" + pid + n, at most 15 characters
    request.addfinalizer(ns.delete)
    client = Namespace.create("cli")
    request.addfinalizer(client.delete)
    veth(ns, "eth0", client, "eth0")       # one pair, each end inside its namespace, both up
    ns.address("eth0", "10.1.0.1/24")
    ns.run(["ip", "route"])                # a command inside the namespace
    sock = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a socket living in the namespace

`bridge(ns, "br0", ["eth0", "eth1"])` joins interfaces of one namespace into a bridge (a segment with
several clients or servers on it). Deleting a namespace removes every interface inside it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

_counter = itertools.count()
_CLONE_NEWNET = 0x40000000


def unique(prefix: str) -> str:
    """A name no other test process uses: prefix + pid + counter, cut to the 15-char interface limit."""
    suffix = f"{os.getpid() % 100000}{next(_counter)}"
    return (prefix[: 15 - len(suffix)] + suffix)[:15]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Namespace:
    name: str

    @classmethod
    def create(cls, prefix: str) -> Namespace:
        ns = cls(unique(prefix))
        _ip("netns", "add", ns.name)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; raises on a non-zero exit unless check=False."""
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.command(argv), **kwargs)

    def address(self, ifname: str, cidr: str) -> None:
        self.run(["ip", "addr", "add", cidr, "dev", ifname])

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket created inside the namespace (it stays there whatever thread uses it later)."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            # setns() changes only the calling thread's namespace, so a throwaway thread does it.
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/var/run/netns/{self.name}") as handle:
                    if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                result.append(socket.socket(family, kind, proto))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        made = result[0]
        if isinstance(made, BaseException):
            raise made
        return made


def veth(a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
    """A veth pair with one end in each namespace, both ends up."""
    _ip("link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    a.run(["ip", "link", "set", a_name, "up"])
    b.run(["ip", "link", "set", b_name, "up"])


def bridge(ns: Namespace, name: str, ports: list[str]) -> None:
    """A bridge inside `ns` enslaving `ports`; forwarding starts at once (no STP delay)."""
    ns.run(["ip", "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
    for port in ports:
        ns.run(["ip", "link", "set", port, "master", name])
    ns.run(["ip", "link", "set", name, "up"])
