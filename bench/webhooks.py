"""Does a webhook receiver that never answers slow the annealer? And how fast do deliveries go?

N nodes x 8 noop roles (6 cohorts deep) from commit to all active, one annealer process, measured:

1. with no event sink (the peer figure: the annealer alone);
2. with a sink for every event ('*') whose receiver accepts connections and never answers, the
   webhook worker in a process of its own (as the kiln-webhooks unit runs it);
3. the same with the worker as a thread inside the annealer's process (as `kiln serve` runs it);
4. with a sink whose receiver answers 200 at once: node-roles/s, then how long until every delivery
   is delivered (deliveries/s).

Prints node-roles/s for each and the ratio to (1). Usage:
.venv/bin/python bench/webhooks.py [--nodes 2000] [--repeat 3] [--postgres [--skip-sqlite]]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.annealer import barclamps, deployments
from appliance.annealer.runner import Annealer
from appliance.config import Settings
from appliance.db import Database, create_database
from appliance.models import Delivery, Event, Node, NodeRole
from appliance.webhooks import sinks
from appliance.webhooks.worker import serve as webhooks_serve
from tests.integration.webhook_receivers import HangingReceiver, Receiver

ROLES = {
    "b0": [],
    "b1": ["b0"],
    "b2": ["b0"],
    "b3": ["b1"],
    "b4": ["b1", "b2"],
    "b5": ["b3"],
    "b6": ["b4"],
    "b7": ["b5", "b6"],
}


def settings_for(url: str, root: Path) -> Settings:
    os.environ["KILN_CONFIG"] = str(root / "absent.toml")
    return Settings(database_url=url, state_dir=root / "state", secret_key="bench-secret-key")


def build(url: str, nodes: int, root: Path) -> None:
    bc = root / "bc" / "bench"
    bc.mkdir(parents=True, exist_ok=True)
    lines = ["barclamp: {name: bench, version: '1'}", "roles:"]
    lines += [f"  - {{name: {n}, jig: noop, requires: [{', '.join(r)}]}}" for n, r in ROLES.items()]
    (bc / "barclamp.yaml").write_text("\n".join(lines) + "\n")
    db = create_database(url)
    with db.session() as session:
        barclamps.load(session, bc)
        session.execute(insert(Node), [{"name": f"node{i:05d}.bench", "discovery": {}} for i in range(nodes)])
    with db.session() as session:
        deployment = deployments.create(session, "bench")
        deployments.add_nodes(session, deployment, list(session.scalars(select(Node.id))), list(ROLES))
    db.dispose()


def _threading_stop(mp_stop: Any) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=lambda: (mp_stop.wait(), stop.set()), daemon=True).start()
    return stop


def annealer_process(url: str, root: str, mp_stop: Any, with_worker: bool, expected: int, out: Any) -> None:
    db = Database(url)
    worker: threading.Thread | None = None
    stop = _threading_stop(mp_stop)
    if with_worker:  # `kiln serve`: the worker shares the annealer's process (and its GIL)
        worker = threading.Thread(target=webhooks_serve, args=(settings_for(url, Path(root)), db, stop))
        worker.start()
    annealer = Annealer(db, batch=1000, workers=4)
    cpu = 0.0
    while not stop.is_set():
        if not annealer.step(idle=True):
            time.sleep(0.005)
        if not cpu and annealer.completed >= expected:
            # CPU of the annealer's process (its webhook thread too, when it has one) up to converged
            cpu = time.process_time()
    annealer.close()
    out.put(("annealer", annealer.completed, cpu or time.process_time()))
    if worker is not None:
        worker.join()


def worker_process(url: str, root: str, mp_stop: Any, out: Any) -> None:
    db = Database(url)
    webhooks_serve(settings_for(url, Path(root)), db, _threading_stop(mp_stop))
    out.put(("worker", 0, time.process_time()))


def run(
    url: str, root: Path, expected: int, *, sink_url: str | None, placement: str, wait_delivered: bool
) -> dict[str, float]:
    db = Database(url)
    settings = settings_for(url, root)
    if sink_url is not None:
        with db.session() as session:
            sinks.create_sink(session, settings, name="bench", url=sink_url, secret="bench-signing-secret")
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=annealer_process, args=(url, str(root), stop, placement == "thread", expected, out)
        )
    ]
    if placement == "process":
        procs.append(ctx.Process(target=worker_process, args=(url, str(root), stop, out)))
    db.engine.dispose()
    for proc in procs[1:]:
        proc.start()
    start = time.perf_counter()
    with db.session() as session:
        deployments.commit(session, deployments.get_deployment(session, "bench"))
    procs[0].start()
    while True:
        with db.read_session() as session:
            active = session.scalar(select(func.count()).where(NodeRole.state == "active"))
        if active == expected:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    result = {"rate": expected / elapsed, "elapsed": elapsed, "deliveries": 0.0, "delivered": 0.0}
    if sink_url is not None:
        # a healthy receiver: wait (bounded) until everything is delivered; a dead one: count what is queued
        wait = 30.0 if wait_delivered else 0.0
        result.update(drain(db, deadline=time.perf_counter() + wait, start=start))
    stop.set()
    cpu = dict((name, seconds) for name, _, seconds in (out.get(timeout=60) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
    db.dispose()
    result["cpu_rate"] = expected / cpu["annealer"]
    result["worker_cpu"] = cpu.get("worker", 0.0)
    return result


def drain(db: Database, deadline: float, start: float) -> dict[str, float]:
    """Wait (bounded) until every event has a delivery and nothing pending is left; count them."""
    while True:
        with db.read_session() as session:
            events = session.scalar(
                select(func.count()).select_from(Event).where(Event.action != "webhook.create")
            )
            made = session.scalar(select(func.count()).select_from(Delivery)) or 0
            delivered = session.scalar(select(func.count()).where(Delivery.status == "delivered")) or 0
        if (made >= (events or 0) and delivered == made) or time.perf_counter() > deadline:
            return {
                "deliveries": float(made),
                "delivered": float(delivered),
                "delivery_rate": delivered / (time.perf_counter() - start),
            }
        time.sleep(0.1)


def report(label: str, r: dict[str, float], base: dict[str, float] | None) -> None:
    ratio = f"  x{r['rate'] / base['rate']:.2f} of no sink" if base else ""
    ratio += f"  per annealer CPU-second {r['cpu_rate']:,.0f}"
    if base:
        ratio += f" (x{r['cpu_rate'] / base['cpu_rate']:.2f})"
    if r.get("worker_cpu"):
        ratio += f"  worker process CPU {r['worker_cpu']:.1f} s"
    extra = ""
    if r.get("deliveries"):
        extra = f"  deliveries {r['deliveries']:,.0f}, delivered {r['delivered']:,.0f}"
        if r.get("delivered"):
            extra += f" ({r['delivery_rate']:,.0f}/s from commit to last delivered)"
    print(f"{label:<44} {r['rate']:>8,.0f} node-roles/s ({r['elapsed']:.2f} s){ratio}{extra}", flush=True)


def bench(kind: str, make_url: Any, nodes: int, root: Path, repeat: int) -> None:
    expected = nodes * len(ROLES)
    hanging = HangingReceiver()
    healthy = Receiver().start()
    try:
        scenarios = [
            ("no event sink (peer)", None, "none", False),
            ("sink that never answers, worker process", hanging.url, "process", False),
            ("sink that never answers, worker thread", hanging.url, "thread", False),
            ("sink answering 200, worker process", healthy.url, "process", True),
        ]
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in scenarios}
        for round_ in range(repeat):  # interleaved, so a change in the machine's load hits every scenario
            for label, sink_url, placement, wait in scenarios:
                name = f"{kind}_{round_}_{label.replace(' ', '_')}"
                url = make_url(name)
                build(url, nodes, root / name)
                r = run(
                    url, root / name, expected, sink_url=sink_url, placement=placement, wait_delivered=wait
                )
                runs[label].append(r)
                report(f"{kind} #{round_ + 1}: {label}", r, runs[scenarios[0][0]][round_])
        print(f"{kind}, medians of {repeat}:")
        base = None
        for label, *_ in scenarios:
            med = {k: statistics.median(r[k] for r in runs[label]) for k in runs[label][0]}
            report(f"  {label}", med, base)
            base = base or med
    finally:
        hanging.stop()
        healthy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    print(f"{args.nodes:,} nodes x {len(ROLES)} noop roles = {args.nodes * len(ROLES):,} node-roles")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-webhooks-"))
    try:
        if not args.skip_sqlite:
            bench("SQLite", lambda label: f"sqlite:///{root / label}.db", args.nodes, root, args.repeat)
        if args.postgres:
            from tests.pgserver import PostgresServer

            server = PostgresServer().start()
            counter = iter(range(1000))
            try:
                bench(
                    "PostgreSQL",
                    lambda _: server.create_database(f"bench_wh_{next(counter)}"),
                    args.nodes,
                    root,
                    args.repeat,
                )
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
