"""The real agent (busybox sh, as in the image) against a real Kiln web server on loopback.

kiln.dhcp=0 skips the NIC bring-up (the image does that part; the e2e tests cover it), and outside the
image the agent never reboots or powers off the host: it reports the task and exits.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

import web.api.discovery
from appliance import agent_tasks, discovery
from appliance.config import Settings
from appliance.db import Database
from appliance.inventory import parse_inventory
from appliance.models import AgentTask, Node
from web.app import create_app

AGENT = Path(__file__).resolve().parents[2] / "discovery_image" / "agent"
MAC = "52:54:00:aa:bb:cc"


@pytest.fixture
def server(settings: Settings, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(web.api.discovery, "POLL_WAIT", 1)
    httpd = make_server("127.0.0.1", 0, create_app(settings, sqlite_db), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.port}"
    httpd.shutdown()
    thread.join(5)
    httpd.server_close()


def _agent(tmp_path: Path, url: str, token: str) -> subprocess.Popen[str]:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"console=ttyS0 kiln.url={url} kiln.token={token} kiln.mac={MAC.upper()} kiln.dhcp=0\n"
    )
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "KILN_CMDLINE": str(cmdline),
        "KILN_RUN_DIR": str(tmp_path / "run"),
        "KILN_AGENT_LIB": str(AGENT),
    }
    return subprocess.Popen(
        ["/usr/bin/busybox", "sh", str(AGENT / "kiln-agent")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met before the deadline")


def _token(url: str) -> str:
    script = subprocess.run(
        ["curl", "-sf", f"{url}/boot/ipxe?mac={MAC}"], capture_output=True, text=True, check=True
    )
    return re.findall(r"kiln\.token=(\S+)", script.stdout)[0]


def test_inventory_script_output_is_valid_for_the_discovery_schema() -> None:
    done = subprocess.run(
        ["/usr/bin/busybox", "sh", str(AGENT / "inventory")],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KILN_MAC": MAC},
        capture_output=True,
        text=True,
        check=True,
    )
    inv = parse_inventory(json.loads(done.stdout))
    assert inv.boot_mac == MAC
    assert inv.cpu.threads and inv.cpu.threads >= 1
    assert inv.memory.kernel_kb and inv.memory.kernel_kb > 0
    assert any(nic.mac for nic in inv.nics)


def test_agent_registers_runs_a_script_reports_and_obeys_poweroff(
    server: str, sqlite_db: Database, tmp_path: Path
) -> None:
    agent = _agent(tmp_path, server, _token(server))
    try:

        def registered() -> int | None:
            with sqlite_db.read_session() as s:
                return s.scalar(select(Node.id))

        node_id = _wait_for(registered)
        with sqlite_db.session() as s:
            agent_tasks.queue(s, node_id, "script", {"script": "echo from-kiln; echo to-stderr >&2; exit 3"})
            # this host has no in-band BMC: the agent says so instead of failing silently
            agent_tasks.queue(s, node_id, "bmc", {"address": "10.9.0.5", "netmask": "255.255.255.0"})
            agent_tasks.queue(s, node_id, "poweroff")
        out, _ = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, out
    assert "would poweroff" in out
    with sqlite_db.read_session() as s:
        node = s.get(Node, node_id)
        assert node is not None and [m.mac for m in node.macs if m.primary] == [MAC]
        assert node.inventory["boot_mac"] == MAC
        tasks = list(s.scalars(select(AgentTask).order_by(AgentTask.id)))
    assert [(t.kind, t.state, t.exit_code) for t in tasks] == [
        ("script", "error", 3),
        ("bmc", "error", 3),
        ("poweroff", "ok", 0),
    ]
    assert tasks[0].output == "from-kiln\nto-stderr"
    assert "no /dev/ipmi0" in tasks[1].output


def test_agent_keeps_retrying_while_kiln_is_unreachable_then_registers(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    app = create_app(settings, sqlite_db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with sqlite_db.session() as s:
        token = discovery.issue_token(s, "discovery", mac=MAC)
    agent = _agent(tmp_path, url, token)
    try:
        # nothing listens yet: the agent's first POST fails and it backs off instead of exiting
        _wait_for(lambda: (tmp_path / "run" / "http.err").exists(), 15)
        assert agent.poll() is None
        httpd = make_server("127.0.0.1", port, app, threaded=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:

            def registered() -> int | None:
                with sqlite_db.read_session() as s:
                    return s.scalar(select(Node.id))

            _wait_for(registered, 30)
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        agent.kill()
        agent.wait()


def test_agent_whose_token_is_refused_exits_instead_of_retrying_forever(server: str, tmp_path: Path) -> None:
    agent = _agent(tmp_path, server, "not-a-valid-token")
    out, _ = agent.communicate(timeout=30)
    assert agent.returncode != 0
    assert "refused the registration" in out
