"""`kiln serve`: services found by entry point, one thread each, clean shutdown, failures named."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from appliance.cli.serve import select_services
from tests.unit.serve_support import Serve


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    runner = Serve(tmp_path)
    yield runner
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
    serve.start("--skip", ",".join([*real, "crasher", "hang"]))
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


def test_a_service_that_ignores_stop_cannot_keep_the_process_alive(serve: Serve) -> None:
    serve.start("--only", "ticker,hang", "--stop-timeout", "1")
    serve.wait_for(lambda: (serve.fake / "hang.started").exists(), "hang to start")
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.finish(timeout=30) == 1
    assert "services did not stop within 1 s: hang" in serve.stderr
    assert (serve.fake / "ticker.stopped").exists()


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


def test_tftp_busy_polls_only_in_a_process_of_its_own() -> None:
    from appliance.cli.serve import shared_process_settings
    from appliance.config import Settings

    settings = Settings(tftp_busy_poll_us=200)
    assert shared_process_settings(settings, ["tftp"]).tftp_busy_poll_us == 200  # systemd: one per unit
    assert shared_process_settings(settings, ["web", "dhcp"]).tftp_busy_poll_us == 200
    # lab mode, benches: the poll loop would keep the GIL from web and DHCP
    assert shared_process_settings(settings, ["web", "tftp"]).tftp_busy_poll_us == 0
    assert settings.tftp_busy_poll_us == 200  # the caller's settings are not changed
