"""`kiln serve` in a subprocess with fake services declared as real entry points.

The services are entry points of a small distribution written into a temp dir and put on PYTHONPATH,
so discovery goes through importlib.metadata exactly as for Kiln's own services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

KILN = str(Path(sys.executable).parent / "kiln")

FAKE_SERVICES = """
import os, pathlib, threading

def _mark(name, what):
    pathlib.Path(os.environ["FAKE_DIR"], f"{name}.{what}").write_text(threading.current_thread().name)

def ticker(settings, db, stop):
    _mark("ticker", "started")
    stop.wait()
    _mark("ticker", "stopped")

def ticker2(settings, db, stop):
    _mark("ticker2", "started")
    stop.wait()
    _mark("ticker2", "stopped")

def hang(settings, db, stop):
    _mark("hang", "started")
    threading.Event().wait()  # ignores stop

def crasher(settings, db, stop):
    _mark("crasher", "started")
    raise RuntimeError("disk on fire")
"""


def _write_fake_distribution(site: Path) -> None:
    site.mkdir()
    (site / "kiln_fake_services.py").write_text(FAKE_SERVICES)
    (site / "kiln_fake_broken.py").write_text('raise RuntimeError("half-written module")\n')
    info = site / "kiln_fake-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiln-fake\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [kiln.services]
            ticker = kiln_fake_services:ticker
            ticker2 = kiln_fake_services:ticker2
            crasher = kiln_fake_services:crasher
            hang = kiln_fake_services:hang
            broken = kiln_fake_broken:serve
            """
        )
    )


class Serve:
    """`kiln serve ...` in a subprocess with its own state dir, database and fake services."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.fake = tmp_path / "fake"
        self.fake.mkdir()
        _write_fake_distribution(tmp_path / "site")
        self.state = tmp_path / "state"
        self.stderr_path = tmp_path / "stderr"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(tmp_path / "site"),
            "FAKE_DIR": str(self.fake),
            "KILN_CONFIG": str(tmp_path / "absent.toml"),
            "KILN_STATE_DIR": str(self.state),
            "KILN_DATABASE_URL": f"sqlite:///{tmp_path / 'kiln.db'}",
            "KILN_METRICS_PORT": "0",
            "KILN_METRICS_BIND": "127.0.0.1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> Serve:
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([KILN, "serve", *args], env=self.env, stderr=err)
        return self

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KILN, "serve", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"kiln serve exited ({self.proc.returncode}) before {what}:\n{self.stderr}")
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self.stderr}")

    def heartbeat(self) -> dict[str, object]:
        assert self.proc is not None
        path = self.state / "run" / f"serve-{self.proc.pid}.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def finish(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
