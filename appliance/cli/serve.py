"""`kiln serve`: run Kiln's services in one process, each in its own thread.

Services are found by entry point (group `kiln.services`), so appliance/ never imports services/ or
web/. Each is `serve(settings, db, stop)` and blocks until `stop` is set. SIGINT/SIGTERM set `stop`;
a service that returns or raises on its own stops the others too, so a supervisor (systemd) sees the
process fail instead of a half-running appliance.

While it runs, the process keeps a heartbeat file in <state_dir>/run/ that `kiln status` reads when
there is no systemd to ask.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import FrameType
from typing import Any

import click

from appliance.cli.base import CliContext, main, pass_cli
from appliance.config import Settings
from appliance.db import Database
from appliance.metrics import mark_service, start_metrics_server, stop_metrics_server

log = logging.getLogger(__name__)

SERVICE_GROUP = "kiln.services"
HEARTBEAT_SECONDS = 2.0
# how long a service gets to return once `stop` is set before the process gives up on it
SHUTDOWN_SECONDS = 15.0

ServeFunc = Callable[[Settings, Database, threading.Event], None]


@dataclass
class LoadedService:
    name: str
    target: str
    serve: ServeFunc | None = None
    error: str | None = None


@dataclass
class RunningService:
    name: str
    thread: threading.Thread | None = None
    error: str | None = None
    finished: bool = False


def service_entry_points() -> dict[str, EntryPoint]:
    """Every service declared by an installed package, by name."""
    return {ep.name: ep for ep in entry_points(group=SERVICE_GROUP)}


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def select_services(available: Iterable[str], only: str | None, skip: str | None) -> list[str]:
    """The names to run, in a stable order; an unknown name is a usage error."""
    known = sorted(available)
    wanted, skipped = _names(only), _names(skip)
    for option, names in (("--only", wanted), ("--skip", skipped)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise click.BadParameter(
                f"unknown service {', '.join(unknown)}; known: {', '.join(known) or '(none installed)'}",
                param_hint=option,
            )
    chosen = [n for n in (wanted or known) if n not in skipped]
    if not chosen:
        raise click.BadParameter("no service left to run", param_hint="--only/--skip")
    return chosen


def load_services(eps: dict[str, EntryPoint], names: list[str]) -> list[LoadedService]:
    """Import each service's entry point; an import failure is kept with its reason, not dropped."""
    loaded = []
    for name in names:
        ep = eps[name]
        item = LoadedService(name=name, target=ep.value)
        try:
            func = ep.load()
        except Exception as exc:  # any import-time failure of someone else's module
            item.error = f"{type(exc).__name__}: {exc}"
        else:
            if callable(func):
                item.serve = func
            else:
                item.error = f"{ep.value} is not callable"
        loaded.append(item)
    return loaded


@dataclass
class Heartbeat:
    """The file `kiln status` reads: who runs, since when, and what failed."""

    path: Path
    started: float = field(default_factory=time.time)

    @classmethod
    def for_process(cls, settings: Settings) -> Heartbeat:
        return cls(path=heartbeat_dir(settings) / f"serve-{os.getpid()}.json")

    def write(self, services: dict[str, str], errors: dict[str, str]) -> None:
        body = {
            "pid": os.getpid(),
            "started": self.started,
            "heartbeat": time.time(),
            "interval": HEARTBEAT_SECONDS,
            "services": services,
            "errors": errors,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def heartbeat_dir(settings: Settings) -> Path:
    return settings.state_dir / "run"


def read_heartbeats(settings: Settings) -> list[dict[str, Any]]:
    """Every serve process's last heartbeat, with `alive` computed from its pid and age."""
    beats = []
    for path in sorted(heartbeat_dir(settings).glob("serve-*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = int(body.get("pid", 0))
        fresh = time.time() - float(body.get("heartbeat", 0)) < 3 * float(body.get("interval", 2))
        body["alive"] = fresh and _pid_alive(pid)
        beats.append(body)
    return beats


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    """Runs loaded services in threads until a signal or until one of them stops on its own."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        services: list[LoadedService],
        stop_timeout: float = SHUTDOWN_SECONDS,
    ) -> None:
        self.stop_timeout = stop_timeout
        self.settings = settings
        self.db = db
        self.services = services
        self.stop = threading.Event()
        self.running: dict[str, RunningService] = {}
        self.heartbeat = Heartbeat.for_process(settings)
        self.signalled: int | None = None

    def _run_one(self, service: LoadedService, record: RunningService) -> None:
        assert service.serve is not None
        mark_service(service.name, True)
        try:
            service.serve(self.settings, self.db, self.stop)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            log.error("service %s failed:\n%s", service.name, traceback.format_exc())
        finally:
            mark_service(service.name, False)
            record.finished = True
            if not self.stop.is_set():
                if record.error is None:
                    record.error = "serve() returned before stop was asked"
                log.error(
                    "service %s stopped on its own (%s); stopping the others", service.name, record.error
                )
                self.stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = signum
        self.stop.set()

    def _states(self) -> tuple[dict[str, str], dict[str, str]]:
        states, errors = {}, {}
        for s in self.services:
            if s.error is not None:
                states[s.name], errors[s.name] = "failed", s.error
                continue
            r = self.running.get(s.name)
            if r is None:
                states[s.name] = "starting"
            elif r.error is not None:
                states[s.name], errors[s.name] = "failed", r.error
            else:
                states[s.name] = "stopped" if r.finished else "active"
        return states, errors

    def run(self) -> int:
        """Block until stopped; 0 after a clean shutdown by signal, 1 if any service failed."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for service in self.services:
                if service.serve is None:
                    continue
                record = RunningService(service.name)
                # daemon: a service that ignores `stop` must not keep the process alive past the deadline
                record.thread = threading.Thread(
                    target=self._run_one, args=(service, record), name=f"kiln-{service.name}", daemon=True
                )
                self.running[service.name] = record
                record.thread.start()
            self.heartbeat.write(*self._states())
            while not self.stop.wait(HEARTBEAT_SECONDS):
                self.heartbeat.write(*self._states())
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.heartbeat.remove()

    def _shutdown(self) -> int:
        if self.signalled is not None:
            log.info("%s received, stopping %s", signal.Signals(self.signalled).name, ", ".join(self.running))
        deadline = time.monotonic() + self.stop_timeout
        hung = []
        for r in self.running.values():
            assert r.thread is not None
            r.thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if r.thread.is_alive():
                hung.append(r.name)
        if hung:
            log.error("services did not stop within %.0f s: %s", self.stop_timeout, ", ".join(hung))
            return 1
        failed = [r.name for r in self.running.values() if r.error is not None]
        failed += [s.name for s in self.services if s.error is not None]
        return 1 if failed else 0


def shared_process_settings(settings: Settings, running: list[str]) -> Settings:
    """Settings for services that share this process. A responder that busy-polls (services/busypoll.py)
    releases and retakes the GIL in a tight loop, and a thread of another service waiting for the GIL then
    gets it only after the switch interval (5 ms): in one process, polling would slow the others down.
    systemd runs each service in a process of its own, where polling is what makes TFTP fast."""
    if len(running) > 1 and "tftp" in running and settings.tftp_busy_poll_us:
        log.info(
            "tftp: not busy-polling: it shares this process with %s",
            ", ".join(n for n in running if n != "tftp"),
        )
        return settings.model_copy(update={"tftp_busy_poll_us": 0})
    return settings


@main.command("serve")
@click.option("--only", default=None, metavar="NAMES", help="Run only these services (comma-separated).")
@click.option("--skip", default=None, metavar="NAMES", help="Run every service but these (comma-separated).")
@click.option(
    "--stop-timeout",
    default=SHUTDOWN_SECONDS,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds services get to stop after SIGINT/SIGTERM before the process exits anyway.",
)
@pass_cli
def serve_command(cli: CliContext, only: str | None, skip: str | None, stop_timeout: float) -> None:
    """Run Kiln's services (web, dhcp, tftp, dns, annealer) in one process until SIGINT/SIGTERM."""
    eps = service_entry_points()
    names = select_services(eps, only, skip)
    services = load_services(eps, names)
    broken = [s for s in services if s.error is not None]
    for s in broken:
        click.echo(f"kiln: service '{s.name}' cannot be loaded from {s.target}: {s.error}", err=True)
    # Services asked for by name must all start; a missing one would leave a unit "running" but
    # serving nothing. Without --only (lab, development) the others still run and the failure stays
    # visible here and in `kiln status`.
    if broken and (only or len(broken) == len(services)):
        raise click.exceptions.Exit(1)
    runnable = [s.name for s in services if s.serve is not None]
    settings = shared_process_settings(cli.settings, runnable)
    db = cli.db
    metrics = start_metrics_server(cli.settings, runnable[0] if len(runnable) == 1 else "serve")
    click.echo(
        f"kiln: serving {', '.join(runnable)}"
        + (f" (not loaded: {', '.join(s.name for s in broken)})" if broken else "")
        + (f"; metrics on {metrics.url}" if metrics else ""),
        err=True,
    )
    try:
        code = Supervisor(settings, db, services, stop_timeout).run()
    finally:
        stop_metrics_server()
        db.dispose()
    if code:
        raise click.exceptions.Exit(code)
