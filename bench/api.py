"""REST API throughput: requests/s and latency of /api/v2 under `kiln serve`'s in-process server.

The web service (web/serve.py, werkzeug threaded) and the peer, gunicorn (`-w 2 --threads 4`, how the
kiln-web unit can run it), serve the same app on the same SQLite file with 1,000 nodes. Client
processes (not threads of this process, so they do not share its GIL) send, for a fixed time each:
list a page of 50 nodes, show one node, create a node. Prints requests/s, p50 and p99 per server and
the ratio in-process / gunicorn. Usage: .venv/bin/python bench/api.py [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import auth, nodes
from appliance.config import Settings
from appliance.db import create_database
from web.serve import serve

SCENARIOS = ("list", "show", "create")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {port}") from None
            time.sleep(0.05)


def client(port: int, token: str, scenario: str, seconds: float, worker: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        if scenario == "list":
            method, path, body = "GET", "/api/v2/nodes?limit=50", None
        elif scenario == "show":
            method, path, body = "GET", f"/api/v2/nodes/{1 + (i * 37 + worker) % 1000}", None
        else:
            method, path, body = "POST", "/api/v2/nodes", json.dumps({"name": f"b{port}-{worker}-{i}"})
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        latencies.append(time.perf_counter() - started)
        if response.status >= 400:
            errors += 1
    out.put((latencies, errors))


def run(
    port: int, token: str, scenario: str, seconds: float, clients: int
) -> tuple[float, float, float, int]:
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [
        mp.Process(target=client, args=(port, token, scenario, seconds, w, queue)) for w in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / seconds, statistics.median(latencies) * 1000, p99 * 1000, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-api-"))
    os.environ["KILN_CONFIG"] = str(tmp / "absent.toml")
    url = f"sqlite:///{tmp / 'kiln.db'}"
    settings = Settings(
        state_dir=tmp / "state", database_url=url, secret_key="bench-secret", log_level="WARNING"
    )
    db = create_database(url)
    with db.session() as s:
        token = auth.issue_token(s, auth.create_user(s, "bench", "bench-password", "operator"), "bench")[1]
        for i in range(1000):
            nodes.create_node(s, f"seed-{i:04d}", macs=[f"52:54:00:01:{i // 256:02x}:{i % 256:02x}"])

    ours = _free_port()
    stop = threading.Event()
    web = threading.Thread(
        target=serve,
        args=(settings.model_copy(update={"web_bind": f"127.0.0.1:{ours}"}), db, stop),
        daemon=True,
    )
    web.start()
    peer = _free_port()
    env = {
        **os.environ,
        "KILN_DATABASE_URL": url,
        "KILN_STATE_DIR": str(tmp / "state"),
        "KILN_SECRET_KEY": "bench-secret",
        "KILN_LOG_LEVEL": "WARNING",
    }
    gunicorn = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-w",
            "2",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{peer}",
            "--log-level",
            "warning",
            "web.app:create_app()",
        ],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 30
        _wait_listening(ours, deadline)
        _wait_listening(peer, deadline)
        print(f"{args.clients} client processes, {args.seconds:.0f} s per scenario, SQLite, 1,000 nodes")
        print(f"{'scenario':8} {'server':16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for scenario in SCENARIOS:
            figures = {}
            for name, port in (("kiln serve", ours), ("gunicorn 2x4", peer)):
                figures[name] = run(port, token, scenario, args.seconds, args.clients)
                rate, p50, p99, errors = figures[name]
                print(f"{scenario:8} {name:16} {rate:8.0f} {p50:8.1f} {p99:8.1f} {errors:7d}")
            ratio = figures["kiln serve"][0] / figures["gunicorn 2x4"][0]
            print(f"{scenario:8} {'ratio':16} {ratio:8.2f}  (kiln serve / gunicorn)")
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=15)
        stop.set()
        web.join(timeout=15)
        db.dispose()


if __name__ == "__main__":
    main()
