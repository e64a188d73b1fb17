"""TFTP benchmark: a 20 MB file with `curl --tftp-blksize` from Kiln, dnsmasq and tftpy, same run.

    sudo .venv/bin/python -m bench.tftp [--runs 7] [--size-mb 20]

All three servers run in one fresh network namespace (its own loopback, so dnsmasq can have port 69)
and curl runs there too. Each round fetches the file once from each server, in a rotating order, at
blksize 1468 and at 512; the figures are medians over the rounds, in MB/s (10^6 bytes). Every
download is checked byte for byte. Each server's CPU time per block (from /proc/<pid>/stat) is
printed too: on a loaded machine it moves far less than throughput does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.netns import Namespace

PORTS = {"kiln": 6969, "dnsmasq": 69, "tftpy": 6970}

KILN = """
import logging, sys, threading
from pathlib import Path
from services.tftp.server import TftpServer
logging.basicConfig(level=logging.WARNING)
TftpServer(Path(sys.argv[1]), "127.0.0.1", int(sys.argv[2])).run(threading.Event())
"""

TFTPY = """
import logging, sys
import tftpy
logging.getLogger("tftpy").setLevel(logging.ERROR)
tftpy.TftpServer(sys.argv[1]).listen("127.0.0.1", int(sys.argv[2]))
"""


def _wait_ready(ns: Namespace, port: int, name: str, out: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        result = ns.run(["curl", "-s", "-o", str(out), f"tftp://127.0.0.1:{port}/{name}"], check=False)
        if result.returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process: unlike throughput, barely moved by other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(ns: Namespace, port: int, blksize: int, out: Path, size: int) -> float:
    started = time.perf_counter()
    result = ns.run(
        [
            "curl",
            "-s",
            "--max-time",
            "120",
            "--tftp-blksize",
            str(blksize),
            "-o",
            str(out),
            f"tftp://127.0.0.1:{port}/big.bin",
        ],
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or out.stat().st_size != size:
        return 0.0
    return size / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size-mb", type=int, default=20)
    args = parser.parse_args()
    for tool in ("curl", "dnsmasq", "ip"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (scripts/bootstrap --test)")
    size = args.size_mb * 1_000_000
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-tftp-"))
    root = work / "root"
    root.mkdir()
    content = os.urandom(size)
    (root / "big.bin").write_bytes(content)
    (root / "small.bin").write_bytes(b"ready\n")
    ns = Namespace.create("kbtftp")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            ns.popen(
                [
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--enable-tftp",
                    f"--tftp-root={root}",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--user=root",
                    "--quiet-tftp",
                    f"--log-facility={work / 'dnsmasq.log'}",
                ],
            )
        )
        procs.append(ns.popen([sys.executable, "-c", KILN, str(root), str(PORTS["kiln"])]))
        procs.append(ns.popen([sys.executable, "-c", TFTPY, str(root), str(PORTS["tftpy"])]))
        out = work / "out.bin"
        for port in PORTS.values():
            _wait_ready(ns, port, "small.bin", out)
        servers = list(PORTS)
        pids = dict(zip(servers, [procs[1].pid, procs[0].pid, procs[2].pid], strict=True))
        results: dict[tuple[str, int], list[float]] = {(s, b): [] for s in servers for b in (1468, 512)}
        cpu: dict[tuple[str, int], list[float]] = {(s, b): [] for s in servers for b in (1468, 512)}
        for run in range(args.runs):
            order = servers[run % 3 :] + servers[: run % 3]
            for blksize in (1468, 512):
                for server in order:
                    before = cpu_seconds(pids[server])
                    mbps = fetch(ns, PORTS[server], blksize, out, size)
                    per_block = (cpu_seconds(pids[server]) - before) / (size // blksize + 1) * 1e6
                    if mbps and out.read_bytes() != content:
                        raise SystemExit(f"{server} sent different bytes")
                    results[(server, blksize)].append(mbps)
                    cpu[(server, blksize)].append(per_block)
                    print(
                        f"run {run + 1} blksize {blksize:5d} {server:8s} {mbps:7.1f} MB/s  "
                        f"server CPU {per_block:5.1f} µs/block",
                        flush=True,
                    )
        print()
        print(f"TFTP {args.size_mb} MB with curl, median of {args.runs} runs (MB/s):")
        for blksize in (1468, 512):
            med = {s: statistics.median(results[(s, blksize)]) for s in servers}
            print(
                f"  blksize {blksize:5d}: kiln {med['kiln']:6.1f}   dnsmasq {med['dnsmasq']:6.1f}   "
                f"tftpy {med['tftpy']:6.1f}   kiln/dnsmasq {med['kiln'] / med['dnsmasq']:.2f}x   "
                f"kiln/tftpy {med['kiln'] / med['tftpy']:.2f}x"
            )
        print("Server CPU per block, median (µs; lower is better, and robust to other load):")
        for blksize in (1468, 512):
            med = {s: statistics.median(cpu[(s, blksize)]) for s in servers}
            print(
                f"  blksize {blksize:5d}: kiln {med['kiln']:5.1f}   dnsmasq {med['dnsmasq']:5.1f}   "
                f"tftpy {med['tftpy']:5.1f}   dnsmasq/kiln {med['dnsmasq'] / med['kiln']:.2f}x"
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
