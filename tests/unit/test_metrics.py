"""appliance.metrics: one /metrics listener per process, on the port settings give the service."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from appliance.config import Settings
from appliance.metrics import (
    ERRORS,
    REQUESTS,
    mark_service,
    metrics_port,
    start_metrics_server,
    stop_metrics_server,
)


@pytest.fixture(autouse=True)
def no_listener_left() -> Iterator[None]:
    stop_metrics_server()
    yield
    stop_metrics_server()


def test_each_service_has_its_own_port_and_serve_has_one_for_all(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_ports": {"dhcp": 19672}})
    assert metrics_port(settings, "dhcp") == 19672
    assert metrics_port(settings, "dns") == 9674, "a service missing from the setting keeps its default"
    assert metrics_port(settings, "serve") == settings.metrics_port
    assert metrics_port(settings, "some-new-service") == settings.metrics_port


def test_metrics_are_exposed_once_per_process_over_http(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_port": 0, "metrics_ports": {"dns": 0}})
    first = start_metrics_server(settings, "dns")
    assert first is not None and first.port > 0
    assert start_metrics_server(settings, "dhcp") is first, (
        "a second listener would publish the same registry"
    )
    REQUESTS.labels("dns", "query").inc(3)
    ERRORS.labels("dns", "malformed").inc()
    mark_service("dns", True)
    body = urllib.request.urlopen(first.url, timeout=10).read().decode()
    assert 'kiln_requests_total{kind="query",service="dns"}' in body
    assert 'kiln_errors_total{kind="malformed",service="dns"}' in body
    assert 'kiln_service_up{service="dns"} 1.0' in body
    stop_metrics_server()
    with pytest.raises(OSError):
        urllib.request.urlopen(first.url, timeout=2)


def test_a_taken_port_leaves_the_service_running_without_metrics(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        settings = settings.model_copy(update={"metrics_ports": {"tftp": port}})
        assert start_metrics_server(settings, "tftp") is None


def test_disabled_metrics_open_no_port(settings: Settings) -> None:
    assert start_metrics_server(settings.model_copy(update={"metrics_enabled": False}), "web") is None
