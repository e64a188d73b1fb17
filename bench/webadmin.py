"""Admin nodes page with 10,000 nodes in the database: server time per request, p50/p95/max.

Builds a SQLite database with N nodes (a MAC each; half of them bound to a deployment with three
node-roles each), logs in as an operator through the login form, then requests the nodes page in the
ways an operator uses it (first page, later pages, sort by state/power/changed, search by name and by
MAC, filter by state, 200 rows per page, the live `?fragment=table` refresh). Server time is the time
the app takes to answer inside the process (Flask's test client: no sockets, no browser).

The peer figure is the API's own list (GET /api/v2/nodes?limit=50, same database, same process): the
ratio says what the page costs over the bare JSON list. Target: p95 <= 300 ms.

Usage: .venv/bin/python bench/webadmin.py [--nodes 10000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import auth
from appliance.annealer import barclamps, deployments
from appliance.config import Settings
from appliance.db import create_database
from appliance.models import Node, NodeMac, User
from web.app import create_app

PASSWORD = "bench password 1"
STATES = ("discovered", "annealing", "ready", "error", "off")
ROLES = "barclamp: {name: benchweb, version: '1'}\nroles:\n  - {name: w0}\n  - {name: w1, requires: [w0]}\n  - {name: w2, requires: [w1]}\n"


def build(url: str, count: int, root: Path) -> None:
    db = create_database(url)
    bc = root / "benchweb"
    bc.mkdir()
    (bc / "barclamp.yaml").write_text(ROLES)
    with db.session() as s:
        barclamps.load(s, bc)
        auth.create_user(s, "operator", PASSWORD, "operator")
        s.execute(
            insert(Node),
            [
                {
                    "name": f"rack{i // 40:03d}-n{i % 40:02d}.bench",
                    "state": STATES[i % len(STATES)],
                    "power_state": ("on", "off", None)[i % 3],
                    "bootenv": "local",
                    "discovery": {},
                }
                for i in range(count)
            ],
        )
        ids = list(s.scalars(select(Node.id).order_by(Node.id)))
        s.execute(
            insert(NodeMac),
            [
                {
                    "mac": f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    "node_id": i,
                    "primary": True,
                }
                for i in ids
            ],
        )
    with db.session() as s:
        deployment = deployments.create(s, "bench")
        deployments.add_nodes(s, deployment, ids[: count // 2], ["w2"])
    db.dispose()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-web-"))
    url = f"sqlite:///{root / 'kiln.db'}"
    started = time.perf_counter()
    build(url, args.nodes, root)
    print(
        f"built {args.nodes} nodes (+{args.nodes // 2 * 3} node-roles) in {time.perf_counter() - started:.1f} s"
    )
    settings = Settings(
        state_dir=root / "state", database_url=url, secret_key="bench-secret-key", tftp_root=root / "tftp"
    )
    app = create_app(settings, create_database(url))
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text)
    assert token
    answer = client.post(
        "/admin/login", data={"username": "operator", "password": PASSWORD, "csrf_token": token.group(1)}
    )
    assert answer.status_code == 302, answer.status_code
    db = create_database(url)
    with db.session() as s:
        user = s.scalar(select(User).where(User.username == "operator"))
        assert user is not None
        api_token = auth.issue_token(s, user, "bench")[1]
    pages = [
        "/admin/nodes",
        "/admin/nodes?page=2",
        "/admin/nodes?page=150",
        "/admin/nodes?sort=state&dir=desc",
        "/admin/nodes?sort=power",
        "/admin/nodes?sort=updated&dir=desc&page=40",
        "/admin/nodes?q=rack120",
        "/admin/nodes?q=52:54:00:00:13:88",
        "/admin/nodes?state=error",
        "/admin/nodes?per=200&page=3",
        "/admin/nodes?fragment=table&page=7",
    ]
    for url_ in pages:  # warm caches and check every variant answers
        reply = client.get(url_)
        assert reply.status_code == 200, (url_, reply.status_code)
    times: dict[str, list[float]] = {p: [] for p in pages}
    every: list[float] = []
    for _ in range(args.rounds):
        for url_ in pages:
            t0 = time.perf_counter()
            reply = client.get(url_)
            elapsed = time.perf_counter() - t0
            assert reply.status_code == 200
            times[url_].append(elapsed)
            every.append(elapsed)
    api: list[float] = []
    for _ in range(args.rounds * 3):
        t0 = time.perf_counter()
        reply = client.get("/api/v2/nodes?limit=50", headers={"Authorization": f"Bearer {api_token}"})
        api.append(time.perf_counter() - t0)
        assert reply.status_code == 200
    others: dict[str, list[float]] = {}
    with db.read_session() as s:
        first_node = s.scalar(select(Node.id).order_by(Node.id))
    for url_ in (
        "/admin/",
        f"/admin/nodes/{first_node}",
        "/admin/deployments",
        "/admin/deployments/2",
        "/admin/events",
    ):
        others[url_] = []
        for _ in range(max(3, args.rounds // 4)):
            t0 = time.perf_counter()
            reply = client.get(url_)
            others[url_].append(time.perf_counter() - t0)
            assert reply.status_code == 200, (url_, reply.status_code)
    print(f"{'page':48} {'p50 ms':>8} {'p95 ms':>8}")
    for url_, values in times.items():
        print(f"{url_:48} {statistics.median(values) * 1000:8.1f} {percentile(values, 95) * 1000:8.1f}")
    print("other pages (informational):")
    for url_, values in others.items():
        print(f"{url_:48} {statistics.median(values) * 1000:8.1f} {percentile(values, 95) * 1000:8.1f}")
    p95 = percentile(every, 95)
    api_p95 = percentile(api, 95)
    print(
        f"nodes page, all variants ({len(every)} requests): p50 {statistics.median(every) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {max(every) * 1000:.1f} ms (target p95 <= 300 ms: "
        f"{'OK' if p95 <= 0.3 else 'MISSED'})"
    )
    print(
        f"peer: GET /api/v2/nodes?limit=50 p50 {statistics.median(api) * 1000:.1f} ms, p95 {api_p95 * 1000:.1f} ms; "
        f"page/API p95 ratio {p95 / api_p95:.1f}x"
    )


if __name__ == "__main__":
    main()
