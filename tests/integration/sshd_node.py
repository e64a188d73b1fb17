"""A node for jig tests: Debian's sshd inside a network namespace this process creates.

The namespace is reached over a veth pair (host end + namespace end) on a /30 chosen from this
process's pid, in 100.64.0.0/10 so it cannot collide with a lab or real network. Deleting the
namespace removes both ends of the pair.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.netns import Namespace, unique

_counter = itertools.count()


def _subnet() -> tuple[str, str]:
    k = (os.getpid() * 8 + next(_counter)) % (1 << 20)
    second, third, fourth = 64 + (k >> 14) % 64, (k >> 6) % 256, (k % 64) * 4
    return f"100.{second}.{third}.{fourth + 1}", f"100.{second}.{third}.{fourth + 2}"


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"sshd on {host}:{port} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def sshd_node(tmp: Path) -> Iterator[dict[str, Any]]:
    """Yields the node's access data (host, port, user, key_file, host_key) for node.hint["ssh"]."""
    tmp.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client_key")], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    host_ip, node_ip = _subnet()
    config = tmp / "sshd_config"
    config.write_text(
        f"ListenAddress {node_ip}\nPort 22\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nAcceptEnv none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    ns = Namespace.create("sshn")
    host_if = unique("ksh")
    proc: subprocess.Popen[Any] | None = None
    try:
        subprocess.run(
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name],
            check=True,
            capture_output=True,
        )
        subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], check=True)
        subprocess.run(["ip", "link", "set", host_if, "up"], check=True)
        ns.address("eth0", f"{node_ip}/30")
        ns.run(["ip", "link", "set", "eth0", "up"])
        # a file, not a pipe: nobody drains a pipe, and a full one would stall sshd mid-test
        with open(tmp / "sshd.log", "w") as log:
            proc = ns.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=log)
        _wait_port(node_ip, 22, 15, proc, tmp / "sshd.log")
        yield {
            "host": node_ip,
            "port": 22,
            "user": "root",
            "key_file": str(tmp / "client_key"),
            "host_key": " ".join((tmp / "host_key.pub").read_text().split()[:2]),
            "namespace": ns.name,
        }
    finally:
        if proc is not None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
        ns.delete()
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)
