"""Prometheus metrics shared by every Kiln process, and the one helper that exposes them.

Each service counts into the families below (labelled with its name) or defines its own next to the
code it measures; all of them land in prometheus_client's default registry. A process exposes that
registry once, on one port: `kiln serve` running several services on `metrics_port`, a process running
one service (a systemd unit) on that service's port from `metrics_ports`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from appliance.config import DEFAULT_METRICS_PORTS, Settings

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "kiln_requests_total",
    "Requests handled (packets answered, HTTP requests, jig runs)",
    ["service", "kind"],
)
ERRORS = Counter(
    "kiln_errors_total",
    "Requests that failed or were dropped (malformed packets, exceptions, refused)",
    ["service", "kind"],
)
LATENCY = Histogram(
    "kiln_request_seconds",
    "Time from a request's arrival to its answer",
    ["service"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
SERVICE_UP = Gauge("kiln_service_up", "1 while a service's serve() runs in this process", ["service"])
SERVICE_STARTED = Gauge(
    "kiln_service_start_time_seconds", "When a service's serve() started (unix time)", ["service"]
)


@dataclass
class MetricsServer:
    """The process's /metrics listener."""

    service: str
    address: str
    port: int
    _server: WSGIServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# One listener per process: the default registry is process-wide, so a second listener would only
# publish the same numbers twice (and fail on a port already taken).
_lock = threading.Lock()
_running: MetricsServer | None = None


def metrics_port(settings: Settings, service: str) -> int:
    """The port `service` exposes /metrics on; "serve" (several services in one process) has its own."""
    if service == "serve":
        return settings.metrics_port
    if service in settings.metrics_ports:
        return settings.metrics_ports[service]
    if service in DEFAULT_METRICS_PORTS:
        return DEFAULT_METRICS_PORTS[service]
    return settings.metrics_port


def start_metrics_server(settings: Settings, service: str) -> MetricsServer | None:
    """Expose /metrics for this process, once; later calls return the listener already running.

    Returns None when metrics are disabled or the port is taken (logged). Port 0 picks a free port
    (tests); `.port` says which.
    """
    global _running
    if not settings.metrics_enabled:
        return None
    with _lock:
        if _running is not None and _running._server is not None:
            return _running
        port = metrics_port(settings, service)
        try:
            server, thread = start_http_server(port, addr=settings.metrics_bind)
        except OSError as exc:
            # metrics are for watching the service, never a reason to stop it from serving
            log.warning(
                "no /metrics for %s: cannot listen on %s:%d: %s", service, settings.metrics_bind, port, exc
            )
            return None
        bound = server.server_address
        _running = MetricsServer(
            service=service, address=str(bound[0]), port=int(bound[1]), _server=server, _thread=thread
        )
        log.info("metrics for %s on %s", service, _running.url)
        return _running


def stop_metrics_server() -> None:
    """Close this process's /metrics listener (clean shutdown, tests)."""
    global _running
    with _lock:
        if _running is not None:
            _running.stop()
            _running = None


def mark_service(service: str, up: bool) -> None:
    """Record that a service's serve() started (up=True) or returned (up=False)."""
    SERVICE_UP.labels(service).set(1 if up else 0)
    if up:
        SERVICE_STARTED.labels(service).set(time.time())
