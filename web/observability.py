"""Per-request logging context and Prometheus metrics for the web process.

Every log line written while a request is handled carries its request id, user and remote address:
a contextvar holds them and `RequestContextFilter` copies them onto each LogRecord. The filter sits on
handlers (filters on a logger do not apply to records of its children), installed by
`install_log_context()` from the process entry points (web/serve.py, web/wsgi.py), never at import.

Per-endpoint metrics live in a registry owned by each app, so building several apps in one process
(the tests) never registers a metric twice; each request is also counted in the process-wide families
of appliance.metrics (service="web"). /metrics exports both registries, so counters that other
modules (BMC, discovery...) put in the default registry show up here too.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import logging
import time
import uuid
from dataclasses import dataclass

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from appliance import metrics as shared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestInfo:
    request_id: str = "-"
    user: str = "-"
    remote_addr: str = "-"


request_info: contextvars.ContextVar[RequestInfo] = contextvars.ContextVar(
    "kiln_request",
    default=RequestInfo(),  # noqa: B039 (frozen dataclass: immutable)
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(user)s %(remote_addr)s]: %(message)s"


class RequestContextFilter(logging.Filter):
    """Adds request_id, user and remote_addr (or '-') to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = request_info.get()
        record.request_id = info.request_id
        record.user = info.user
        record.remote_addr = info.remote_addr
        return True


def install_log_context(level: str = "INFO") -> None:
    """Put the request context on every root handler (adding a stderr one if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    else:
        root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, RequestContextFilter) for f in handler.filters):
            handler.addFilter(RequestContextFilter())
            # only plain stderr/journald handlers get the context in their format; others (a test
            # harness's, a JSON formatter) keep theirs and can read the attributes themselves
            if type(handler) is logging.StreamHandler:
                handler.setFormatter(logging.Formatter(LOG_FORMAT))
    # werkzeug's own access line would repeat the one web.observability writes with the context
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def set_user(username: str) -> None:
    request_info.set(RequestInfo(request_info.get().request_id, username, request_info.get().remote_addr))


class WebMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kiln_http_requests",
            "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kiln_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.errors = Counter(
            "kiln_http_errors",
            "Requests that ended in an error, by endpoint and kind (client: 4xx, server: 5xx)",
            ["endpoint", "kind"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(REGISTRY)


def _request_id() -> str:
    # accept a caller's id (a proxy's X-Request-ID) only if it is short and printable, so logs stay clean
    given = request.headers.get("X-Request-ID", "")
    if 0 < len(given) <= 64 and given.isascii() and given.replace("-", "").replace("_", "").isalnum():
        return given
    return uuid.uuid4().hex[:16]


def _loggable_path() -> str:
    """The path and query, with the values of secret-looking parameters (?token=...) masked."""
    if not request.args:
        return request.path
    parts = [
        f"{key}={'***' if any(word in key.lower() for word in _SECRET_WORDS) else value}"
        for key, value in request.args.items(multi=True)
    ]
    return f"{request.path}?{'&'.join(parts)}"


_SECRET_WORDS = ("token", "password", "secret", "key")


def init_app(app: Flask, metrics_token: str = "") -> WebMetrics:
    metrics = WebMetrics()

    @app.before_request
    def _start() -> None:
        g.kiln_started = time.perf_counter()
        g.kiln_request_token = request_info.set(RequestInfo(_request_id(), "-", request.remote_addr or "-"))

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.pop("kiln_started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        shared.REQUESTS.labels("web", request.method).inc()
        shared.LATENCY.labels("web").observe(elapsed)
        if response.status_code >= 400:
            kind = "server" if response.status_code >= 500 else "client"
            metrics.errors.labels(endpoint, kind).inc()
            shared.ERRORS.labels("web", kind).inc()
        info = request_info.get()
        response.headers["X-Request-ID"] = info.request_id
        log.info("%s %s %d %.1fms", request.method, _loggable_path(), response.status_code, elapsed * 1000)
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("kiln_request_token", None)
        if token is not None:
            # a server that hands the request to another thread/context cannot reset; nothing leaks then
            with contextlib.suppress(ValueError):
                request_info.reset(token)

    @app.get("/metrics")
    def metrics_view() -> Response:
        if metrics_token:
            scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                sent.strip().encode(), metrics_token.encode()
            ):
                body = '{"error": "/metrics needs the metrics token (Authorization: Bearer ...)", "field": "Authorization"}'
                return Response(body, status=401, mimetype="application/json")
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    return metrics
