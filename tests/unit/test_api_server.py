"""The issue's newcomer check: the real web service (web/serve.py) on loopback, driven with curl and a token."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import auth
from appliance.config import Settings
from appliance.db import Database
from web.serve import parse_bind, serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def curl(method: str, url: str, token: str | None, body: object | None = None) -> tuple[int, object]:
    assert shutil.which("curl"), "curl is needed (apt-get install curl)"
    cmd = ["curl", "-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=15).stdout
    text, _, code = out.rpartition("\n")
    return int(code), (json.loads(text) if text.strip().startswith(("{", "[")) else text)


@pytest.fixture
def server(settings: Settings, db: Database) -> Iterator[tuple[str, str]]:
    with db.session() as s:
        token = auth.issue_token(s, auth.create_user(s, "newcomer", "newcomer-password", "operator"), "curl")[
            1
        ]
    port = _free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(settings.model_copy(update={"web_bind": f"127.0.0.1:{port}"}), db, stop),
        daemon=True,
    )
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert time.monotonic() < deadline, "web service did not start listening"
            assert thread.is_alive(), "web service thread died"
            time.sleep(0.02)
    yield base, token
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive(), "serve() did not return after stop was set"


def test_newcomer_curls_network_range_node_and_sees_the_event(server: tuple[str, str]) -> None:
    base, token = server
    api = f"{base}/api/v2"
    assert curl("GET", f"{api}/nodes", None)[0] == 401

    code, net = curl("POST", f"{api}/networks", token, {"name": "admin", "cidr": "192.168.124.0/24"})
    assert code == 201, net
    assert isinstance(net, dict)
    code, rng = curl(
        "POST",
        f"{api}/networks/{net['id']}/ranges",
        token,
        {"name": "hosts", "kind": "host", "first": "192.168.124.10", "last": "192.168.124.99"},
    )
    assert code == 201, rng
    code, node = curl("POST", f"{api}/nodes", token, {"name": "node-1", "macs": ["52:54:00:12:34:56"]})
    assert code == 201, node
    assert isinstance(node, dict)

    code, events = curl("GET", f"{api}/events?action=node.create", token)
    assert code == 200 and isinstance(events, dict)
    assert [(e["subject_id"], e["actor"]) for e in events["items"]] == [(node["id"], "newcomer")]
    code, all_events = curl("GET", f"{api}/events", token)
    assert isinstance(all_events, dict)
    assert [e["action"] for e in all_events["items"]][-3:] == [
        "network.create",
        "range.create",
        "node.create",
    ]

    code, metrics = curl("GET", f"{base}/metrics", None)
    assert (
        code == 200
        and 'kiln_http_requests_total{endpoint="/api/v2/nodes",method="POST",status="201"} 1.0'
        in str(metrics)
    )


def test_bind_addresses_parse() -> None:
    assert parse_bind("127.0.0.1:8080", 1) == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:9000", 1) == ("::1", 9000)
    assert parse_bind("0.0.0.0", 8081) == ("0.0.0.0", 8081)


@pytest.mark.parametrize("app_spec", ["web.app:create_app()", "web.wsgi:app"])
def test_gunicorn_serves_the_app_factory(tmp_path: Path, app_spec: str) -> None:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    assert gunicorn.exists(), "gunicorn is a runtime dependency: pip install -e ."
    port = _free_port()
    env = {
        **os.environ,
        "KILN_CONFIG": str(tmp_path / "absent.toml"),
        "KILN_STATE_DIR": str(tmp_path / "state"),
        "KILN_DATABASE_URL": f"sqlite:///{tmp_path / 'kiln.db'}",
        "KILN_SECRET_KEY": "gunicorn-test-secret",
    }
    proc = subprocess.Popen(
        [str(gunicorn), "-w", "1", "-b", f"127.0.0.1:{port}", app_spec],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "gunicorn exited"
            try:
                code, body = curl("GET", f"http://127.0.0.1:{port}/healthz", None)
                break
            except subprocess.CalledProcessError:
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.1)
        assert (code, body) == (200, {"status": "ok"})
        assert curl("GET", f"http://127.0.0.1:{port}/api/v2/nodes", None)[0] == 401
    finally:
        proc.terminate()
        proc.wait(timeout=15)
