"""`kiln lab` in a subprocess with names, subnet and ports no other test process uses."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import unique

KILN = str(Path(sys.executable).parent / "kiln")
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False).stdout


def namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


@dataclass
class RunningLab:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    state: Path
    out: Path
    err: Path
    namespace: str
    bridge: str
    host_veth: str
    port: int
    second: int

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"kiln lab exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}:\n{self.output()}")

    def expected_exit_code(self) -> int:
        """0 after a clean stop, unless a service could not be loaded (kiln serve then reports 1)."""
        return 1 if "(not loaded: " in self.err.read_text() else 0

    def serve_pid(self) -> int:
        beats = list((self.state / "run").glob("serve-*.json"))
        assert beats, "kiln serve keeps no heartbeat"
        return int(json.loads(beats[0].read_text())["pid"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def remove_leftovers(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "netns", "delete", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_veth], capture_output=True)


def lab_env(tmp_path: Path, state: Path | None = None) -> dict[str, str]:
    """Names, subnet and ports of a lab no other test process uses."""
    n = next(_counter)
    second = 100 + (os.getpid() * 7 + n) % 150
    env = {
        **os.environ,
        "KILN_STATE_DIR": str(state or tmp_path / f"state{n}"),
        "KILN_LAB_NAMESPACE": unique("klab"),
        "KILN_LAB_BRIDGE": unique("kbr"),
        "KILN_LAB_PORT": str(free_port()),
        "KILN_LAB_SUBNET": f"10.{second}.{n % 200}.0/24",
        "KILN_LAB_LINK": f"169.254.{second}.{(n % 60) * 4}/30",
        "KILN_LAB_METRICS_PORT": str(free_port()),
    }
    # one discovery image for every test lab (the builder locks and caches by content)
    env["KILN_DISCOVERY_CACHE"] = str(Path(tempfile.gettempdir()) / "kiln-test-discovery")
    env.pop("KILN_CONFIG", None)
    return env


def start_lab(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> RunningLab:
    env = env or lab_env(tmp_path)
    namespace = env["KILN_LAB_NAMESPACE"]
    out, err = tmp_path / f"{namespace}.out", tmp_path / f"{namespace}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([KILN, "lab", *args], env=env, stdout=o, stderr=e, cwd=tmp_path)
    return RunningLab(
        proc=proc,
        env=env,
        state=Path(env["KILN_STATE_DIR"]),
        out=out,
        err=err,
        namespace=namespace,
        bridge=env["KILN_LAB_BRIDGE"],
        host_veth=f"{namespace[:12]}-h",
        port=int(env["KILN_LAB_PORT"]),
        second=int(env["KILN_LAB_SUBNET"].split(".")[1]),
    )


def qemu_pids(lab: RunningLab) -> list[int]:
    """QEMU processes started for this lab (their command line names the lab's state dir)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and str(lab.state).encode() in b" ".join(argv):
            pids.append(int(proc.name))
    return pids
