"""DNS benchmark: dnsperf queries/s for the admin zone against Kiln and dnsmasq, same setup, same run.

    sudo .venv/bin/python -m bench.dns [--nodes 1000] [--seconds 5] [--rounds 3]

Both servers run in one fresh network namespace on its loopback, with the same records: Kiln from a
SQLite database of N nodes with one allocation each, dnsmasq from --host-record for the same names
(which gives it the PTRs too). The query file asks A for every node and PTR for every second one.
dnsperf runs closed-loop (200 queries in flight) for each server in alternating rounds; a server's
figure is the median achieved rate. When a server loses >= 1 % of queries at its maximum, rates
below it are tried (-Q) until one loses < 1 %, and that rate is its figure. Each server's CPU time
per query (from /proc/<pid>/stat) is printed too: on a loaded machine it moves far less than qps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.db import create_database
from appliance.models import Allocation, Network, Node, Range
from tests.netns import Namespace

KILN_PORT, DNSMASQ_PORT = 5300, 5301

KILN = """
import logging, sys, threading
from appliance.config import Settings
from appliance.db import Database
from services.dns.server import DnsServer
logging.basicConfig(level=logging.WARNING)
settings = Settings(state_dir=sys.argv[1], database_url=sys.argv[2], dns_bind="127.0.0.1", dns_port=int(sys.argv[3]))
DnsServer(settings, Database(sys.argv[2])).run(threading.Event())
"""


def address(i: int) -> str:
    return f"10.60.{i // 250}.{i % 250 + 1}"


def seed(url: str, nodes: int) -> None:
    db = create_database(url)
    with db.session() as s:
        net = Network(name="admin", cidr="10.60.0.0/16")
        s.add(net)
        s.flush()
        rng = Range(
            network_id=net.id,
            name="hosts",
            kind="host",
            first="10.60.0.1",
            last="10.60.255.254",
            first_int=0,
            last_int=0,
        )
        s.add(rng)
        s.flush()
        for i in range(nodes):
            node = Node(name=f"n{i}")
            s.add(node)
            s.flush()
            addr = address(i)
            parts = [int(p) for p in addr.split(".")]
            s.add(
                Allocation(
                    network_id=net.id,
                    range_id=rng.id,
                    node_id=node.id,
                    address=addr,
                    address_int=(parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3],
                )
            )
    db.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: unlike queries/s, barely moved by other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(
    ns: Namespace, port: int, queries: Path, seconds: int, rate: int | None = None
) -> tuple[float, float]:
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(queries),
        "-l",
        str(seconds),
        "-q",
        "200",
    ]
    if rate:
        argv += ["-Q", str(rate)]
    out = ns.run(argv, check=False, timeout=seconds + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out)
    if not qps or not lost:
        return 0.0, 100.0
    return float(qps.group(1)), float(lost.group(1))


def sustained(ns: Namespace, port: int, queries: Path, seconds: int, qps: float, lost: float) -> float:
    if lost < 1.0:
        return qps
    for fraction in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        achieved, lost = dnsperf(ns, port, queries, seconds, int(qps * fraction))
        print(f"    -Q {int(qps * fraction)}: {achieved:,.0f} qps, {lost:.2f} % lost", flush=True)
        if lost < 1.0:
            return achieved
    return 0.0


def wait_answers(ns: Namespace, port: int, name: str, want: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = ns.run(
            ["dig", "@127.0.0.1", "-p", str(port), name, "+short", "+time=1", "+tries=1"], check=False
        ).stdout
        if want in out:
            return
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "dig", "ip"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (scripts/bootstrap --test)")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-dns-"))
    url = f"sqlite:///{work / 'kiln.db'}"
    seed(url, args.nodes)
    queries = work / "queries.txt"
    lines = []
    for i in range(args.nodes):
        lines.append(f"n{i}.kiln.lab A")
        if i % 2:
            lines.append(f"{'.'.join(reversed(address(i).split('.')))}.in-addr.arpa PTR")
    queries.write_text("\n".join(lines) + "\n")
    conf = work / "dnsmasq.conf"
    conf.write_text("".join(f"host-record=n{i}.kiln.lab,{address(i)}\n" for i in range(args.nodes)))
    ns = Namespace.create("kbdns")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(ns.popen([sys.executable, "-c", KILN, str(work), url, str(KILN_PORT)]))
        procs.append(
            ns.popen(
                [
                    "dnsmasq",
                    "--keep-in-foreground",
                    f"--conf-file={conf}",
                    "--no-resolv",
                    "--no-hosts",
                    f"--port={DNSMASQ_PORT}",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--user=root",
                    "--cache-size=10000",
                    f"--log-facility={work / 'dnsmasq.log'}",
                ]
            )
        )
        last = f"n{args.nodes - 1}.kiln.lab"
        wait_answers(ns, KILN_PORT, last, address(args.nodes - 1))
        wait_answers(ns, DNSMASQ_PORT, last, address(args.nodes - 1))
        ports = {"kiln": KILN_PORT, "dnsmasq": DNSMASQ_PORT}
        pids = {"kiln": procs[0].pid, "dnsmasq": procs[1].pid}
        figures: dict[str, list[float]] = {"kiln": [], "dnsmasq": []}
        cpu: dict[str, list[float]] = {"kiln": [], "dnsmasq": []}
        for rnd in range(args.rounds):
            order = ["kiln", "dnsmasq"] if rnd % 2 == 0 else ["dnsmasq", "kiln"]
            for server in order:
                before = cpu_seconds(pids[server])
                qps, lost = dnsperf(ns, ports[server], queries, args.seconds)
                per_query = (cpu_seconds(pids[server]) - before) / max(qps * args.seconds, 1) * 1e6
                cpu[server].append(per_query)
                print(
                    f"round {rnd + 1} {server:8s} max {qps:,.0f} qps, {lost:.2f} % lost, "
                    f"server CPU {per_query:.2f} µs/query",
                    flush=True,
                )
                figures[server].append(sustained(ns, ports[server], queries, args.seconds, qps, lost))
        kiln, peer = statistics.median(figures["kiln"]), statistics.median(figures["dnsmasq"])
        print()
        print(
            f"DNS admin zone ({args.nodes} nodes, A + PTR), dnsperf, median of {args.rounds} rounds, < 1 % lost:"
        )
        print(f"  kiln {kiln:,.0f} qps   dnsmasq {peer:,.0f} qps   kiln/dnsmasq {kiln / peer:.2f}x")
        kcpu, pcpu = statistics.median(cpu["kiln"]), statistics.median(cpu["dnsmasq"])
        print(
            f"Server CPU per query, median (lower is better, robust to other load): kiln {kcpu:.2f} µs   "
            f"dnsmasq {pcpu:.2f} µs   dnsmasq/kiln {pcpu / kcpu:.2f}x"
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        ns.delete()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
