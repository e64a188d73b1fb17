"""Annealer throughput: N nodes x 8 noop roles (with dependencies) from commit to all active.

Prints node-roles/s on SQLite and on PostgreSQL with 1, 2 and 4 annealer processes, the number of
node-roles run more than once (from each node-role's run counter, not assumed), and the peak RSS of one
annealer process. The peer, measured in the same run, is the issue's yardstick: a plain sqlite3 loop
with the same batching (claim <= 1000 with one UPDATE ... RETURNING, batched events and unblocking). Usage: .venv/bin/python bench/annealer.py [--nodes 10000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.annealer import barclamps, deployments
from appliance.annealer.runner import Annealer
from appliance.db import Database, create_database
from appliance.models import Node, NodeRole, Run

ROLES = {  # 8 roles, 6 cohorts deep
    "b0": [],
    "b1": ["b0"],
    "b2": ["b0"],
    "b3": ["b1"],
    "b4": ["b1", "b2"],
    "b5": ["b3"],
    "b6": ["b4"],
    "b7": ["b5", "b6"],
}


def write_barclamp(root: Path) -> Path:
    bc = root / "bench"
    bc.mkdir()
    lines = ["barclamp: {name: bench, version: '1'}", "roles:"]
    for name, reqs in ROLES.items():
        lines.append(f"  - {{name: {name}, jig: noop, requires: [{', '.join(reqs)}]}}")
    (bc / "barclamp.yaml").write_text("\n".join(lines) + "\n")
    return bc


def build(url: str, nodes: int, root: Path) -> None:
    db = create_database(url)
    with db.session() as session:
        barclamps.load(session, write_barclamp(root))
        session.execute(insert(Node), [{"name": f"node{i:05d}.bench", "discovery": {}} for i in range(nodes)])
    with db.session() as session:
        node_ids = list(session.scalars(select(Node.id)))
        deployment = deployments.create(session, "bench")
        deployments.add_nodes(session, deployment, node_ids, list(ROLES))
    db.dispose()


def annealer_process(url: str, stop: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    db = Database(url)
    annealer = Annealer(db, batch=1000, workers=4)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    while not stop.is_set():
        if not annealer.step(idle=True):
            time.sleep(0.005)
    annealer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((annealer.completed, usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu0))


def run(url: str, processes: int, expected: int) -> dict[str, float]:
    db = Database(url)
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=annealer_process, args=(url, stop, out)) for _ in range(processes)]
    db.engine.dispose()
    start = time.perf_counter()
    with db.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "bench"))
    for proc in procs:
        proc.start()
    while True:
        with db.read_session() as session:
            active = session.scalar(select(func.count()).where(NodeRole.state == "active"))
        if active == expected:
            break
        time.sleep(0.2)  # the count is not free: poll gently beside the annealers
    elapsed = time.perf_counter() - start
    stop.set()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join()
    with db.read_session() as session:
        twice = session.scalar(select(func.count()).where(NodeRole.run_count > 1))
        never = session.scalar(select(func.count()).where(NodeRole.run_count < 1))
        runs = session.scalar(select(func.count()).select_from(Run))
    db.dispose()
    return {
        "rate": expected / elapsed,
        "elapsed": elapsed,
        "twice": twice or 0,
        "never": never or 0,
        "runs": runs or 0,
        "rss_mb": max(r[1] for r in results) / 1024,
        "cpu_rate": expected / sum(r[2] for r in results),
        "per_process": [r[0] for r in results],  # type: ignore[dict-item]
    }


def plain_sqlite_peer(root: Path, nodes: int) -> tuple[float, float]:
    """The issue's yardstick: plain sqlite3, claim <= 1000 with one UPDATE ... RETURNING, results, events
    and unblocking batched; no ORM, no jigs, no run records. Same graph; returns node-roles/s."""
    import json
    import sqlite3

    path = root / "peer.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
        "CREATE TABLE nr (id INTEGER PRIMARY KEY, node INT, role TEXT, state TEXT, run_count INT DEFAULT 0);"
        "CREATE INDEX nr_state ON nr(state, id);"
        "CREATE TABLE edge (parent INT, child INT, PRIMARY KEY (parent, child));"
        "CREATE INDEX edge_child ON edge(child);"
        "CREATE TABLE ev (id INTEGER PRIMARY KEY, at TEXT, nr INT, data TEXT);"
    )
    con.execute("BEGIN")
    ids: dict[tuple[int, str], int] = {}
    for node in range(nodes):
        for role in ROLES:
            cur = con.execute("INSERT INTO nr (node, role, state) VALUES (?, ?, 'proposed')", (node, role))
            ids[(node, role)] = int(cur.lastrowid or 0)
    con.executemany(
        "INSERT INTO edge VALUES (?, ?)",
        [
            (ids[(n, req)], ids[(n, role)])
            for n in range(nodes)
            for role, reqs in ROLES.items()
            for req in reqs
        ],
    )
    con.execute("COMMIT")
    start, cpu0 = time.perf_counter(), time.process_time()
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "UPDATE nr SET state = CASE WHEN id IN (SELECT child FROM edge) THEN 'blocked' ELSE 'todo' END"
    )
    con.execute("COMMIT")
    data = json.dumps({"from": "todo", "to": "transition"})
    done = 0
    while done < nodes * len(ROLES):
        con.execute("BEGIN IMMEDIATE")
        batch = [
            r[0]
            for r in con.execute(
                "UPDATE nr SET state='transition' WHERE id IN (SELECT id FROM nr WHERE state='todo' LIMIT 1000) RETURNING id"
            )
        ]
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        con.executemany("INSERT INTO ev (at, nr, data) VALUES (?, ?, ?)", [(now, i, data) for i in batch])
        marks = ",".join("?" * len(batch))
        con.execute(f"UPDATE nr SET state='active', run_count=run_count+1 WHERE id IN ({marks})", batch)
        con.executemany("INSERT INTO ev (at, nr, data) VALUES (?, ?, ?)", [(now, i, data) for i in batch])
        freed = [
            r[0]
            for r in con.execute(
                f"UPDATE nr SET state='todo' WHERE state='blocked' AND id IN (SELECT child FROM edge WHERE parent IN ({marks}))"
                " AND NOT EXISTS (SELECT 1 FROM edge e JOIN nr p ON p.id = e.parent WHERE e.child = nr.id AND p.state != 'active')"
                " RETURNING id",
                batch,
            )
        ]
        con.executemany("INSERT INTO ev (at, nr, data) VALUES (?, ?, ?)", [(now, i, data) for i in freed])
        con.execute("COMMIT")
        done += len(batch)
    rate = done / (time.perf_counter() - start)
    cpu_rate = done / (time.process_time() - cpu0)
    con.close()
    return rate, cpu_rate


def report(label: str, r: dict[str, float]) -> None:
    print(
        f"{label:<24} {r['rate']:>9,.0f} node-roles/s  ({r['elapsed']:.2f} s)  run twice: {r['twice']}  "
        f"never: {r['never']}  runs recorded: {r['runs']:,}  peak RSS/annealer: {r['rss_mb']:.0f} MiB  "
        f"per process: {r['per_process']}  per annealer CPU-second: {r['cpu_rate']:,.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--processes", default="1,2,4")
    args = parser.parse_args()
    expected = args.nodes * len(ROLES)
    print(f"{args.nodes:,} nodes x {len(ROLES)} noop roles = {expected:,} node-roles, commit -> all active")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        url = f"sqlite:///{root / 'sqlite' / 'kiln.db'}"
        t0 = time.perf_counter()
        build(url, args.nodes, root / "sqlite")
        print(f"build (bind {expected:,} node-roles + edges): {time.perf_counter() - t0:.1f} s")
        sqlite = run(url, 1, expected)
        report("SQLite, 1 annealer", sqlite)
        peer, peer_cpu = plain_sqlite_peer(root, args.nodes)
        print(
            f"{'peer: plain sqlite3 loop':<24} {peer:>9,.0f} node-roles/s  (same graph and batching, no ORM, no "
            f"run records)  per CPU-second: {peer_cpu:,.0f}  Kiln/peer = {sqlite['rate'] / peer:.2f} "
            f"(per CPU-second {sqlite['cpu_rate'] / peer_cpu:.2f})",
            flush=True,
        )
        if args.skip_postgres:
            return
        from tests.pgserver import PostgresServer

        server = PostgresServer().start()
        try:
            for n in (int(p) for p in args.processes.split(",")):
                url = server.create_database(f"bench{n}")
                (root / f"pg{n}").mkdir()
                build(url, args.nodes, root / f"pg{n}")
                report(f"PostgreSQL, {n} annealer{'s' if n > 1 else ''}", run(url, n, expected))
        finally:
            server.stop()
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("goal on SQLite: >= 10,000 node-roles/s; 0 run twice")


if __name__ == "__main__":
    main()
