"""`kiln serve`: services found by entry point, one thread each, clean shutdown, failures named.

The services here are real entry points of a small distribution written into a temp dir and put on
PYTHONPATH, so discovery goes through importlib.metadata exactly as for Kiln's own services.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from appliance.cli.serve import select_services

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


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    runner = Serve(tmp_path)
    yield runner  # type: ignore[misc]
    runner.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_each_service_runs_in_its_own_thread_and_all_stop_cleanly_on_signal(
    serve: Serve, signum: int
) -> None:
    serve.start("--only", "ticker,ticker2")
    serve.wait_for(lambda: (serve.fake / "ticker.started").exists(), "ticker to start")
    serve.wait_for(lambda: (serve.fake / "ticker2.started").exists(), "ticker2 to start")
    assert (serve.fake / "ticker.started").read_text() == "kiln-ticker"
    assert (serve.fake / "ticker2.started").read_text() == "kiln-ticker2"
    serve.wait_for(
        lambda: serve.heartbeat().get("services") == {"ticker": "active", "ticker2": "active"}, "heartbeat"
    )

    assert serve.proc is not None
    serve.proc.send_signal(signum)
    assert serve.finish() == 0, serve.stderr
    assert (serve.fake / "ticker.stopped").exists()
    assert (serve.fake / "ticker2.stopped").exists()
    assert not list((serve.state / "run").glob("serve-*.json")), "heartbeat file left behind"


def test_metrics_are_served_over_http_while_services_run(serve: Serve) -> None:
    serve.start("--only", "ticker,ticker2")
    serve.wait_for(lambda: "metrics on http://" in serve.stderr, "the metrics URL")
    match = re.search(r"metrics on (http://\S+/metrics)", serve.stderr)
    assert match is not None
    serve.wait_for(lambda: (serve.fake / "ticker2.started").exists(), "ticker2 to start")
    body = urllib.request.urlopen(match.group(1), timeout=10).read().decode()
    assert 'kiln_service_up{service="ticker"} 1.0' in body
    assert 'kiln_service_up{service="ticker2"} 1.0' in body
    assert "kiln_requests_total" in body or "# HELP kiln_requests_total" in body
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.finish() == 0


def test_a_named_service_that_fails_to_import_is_reported_with_its_error_and_nothing_runs(
    serve: Serve,
) -> None:
    result = serve.run("--only", "ticker,broken")
    assert result.returncode == 1
    assert (
        "service 'broken' cannot be loaded from kiln_fake_broken:serve: RuntimeError: half-written module"
        in result.stderr
    )
    assert not (serve.fake / "ticker.started").exists()


def test_without_only_an_unloadable_service_is_reported_while_the_others_run(serve: Serve) -> None:
    real = sorted(ep.name for ep in entry_points(group="kiln.services"))
    serve.start("--skip", ",".join([*real, "crasher"]))
    serve.wait_for(lambda: (serve.fake / "ticker.started").exists(), "ticker to start")
    serve.wait_for(lambda: serve.heartbeat().get("services", {}).get("ticker") == "active", "heartbeat")  # type: ignore[union-attr]
    beat = serve.heartbeat()
    assert beat["services"] == {"broken": "failed", "ticker": "active", "ticker2": "active"}
    assert "half-written module" in beat["errors"]["broken"]  # type: ignore[index]
    assert "service 'broken' cannot be loaded" in serve.stderr
    assert "not loaded: broken" in serve.stderr
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.finish() == 1, "a run with a failed service must not exit 0"
    assert (serve.fake / "ticker.stopped").exists()


def test_a_service_that_crashes_stops_the_others_and_the_process_fails(serve: Serve) -> None:
    result = serve.run("--only", "ticker,crasher")
    assert result.returncode == 1
    assert "service crasher failed" in result.stderr
    assert "RuntimeError: disk on fire" in result.stderr
    assert (serve.fake / "ticker.stopped").exists(), "the healthy service was not stopped cleanly"


def test_an_unknown_service_name_is_a_usage_error_listing_the_known_ones(serve: Serve) -> None:
    result = serve.run("--only", "ticker,nosuch")
    assert result.returncode == 2
    assert "unknown service nosuch" in result.stderr
    assert "ticker" in result.stderr.split("known:")[1]


def test_bad_configuration_stops_serve_with_exit_code_2_naming_the_key(serve: Serve) -> None:
    serve.env["KILN_DNS_PORT"] = "99999"
    result = serve.run("--only", "ticker")
    assert result.returncode == 2
    assert "dns_port" in result.stderr
    assert "Traceback" not in result.stderr


def test_select_services_applies_only_then_skip_in_a_stable_order() -> None:
    known = ["web", "dhcp", "dns", "tftp", "annealer"]
    assert select_services(known, None, None) == ["annealer", "dhcp", "dns", "tftp", "web"]
    assert select_services(known, "web,dns", None) == ["web", "dns"]
    assert select_services(known, None, "dhcp") == ["annealer", "dns", "tftp", "web"]
    assert select_services(known, " web , dns ", "dns") == ["web"]


def test_select_services_refuses_an_empty_selection() -> None:
    with pytest.raises(click.BadParameter, match="no service left"):
        select_services(["web"], None, "web")
    with pytest.raises(click.BadParameter, match="unknown service nope"):
        select_services(["web"], None, "nope")
