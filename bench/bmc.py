"""BMC benchmark: power status of N simulated BMCs, Kiln in parallel versus `ipmitool -C 3` run serially.

    .venv/bin/python -m bench.bmc [--bmcs 50] [--rounds 3] [--workers 32] [--redfish 50]

N OpenIPMI `ipmi_sim` instances run on 127.0.0.1 (tests/bmcsim.py). Figures:

- Kiln cold: one power status per BMC through appliance.bmc.power.power_nodes (probe + RMCP+ login
  + Get Chassis Status, N nodes in one bounded pool, results written to SQLite) - what
  `kiln node power status NODE...` does.
- Kiln warm: the same again with the sessions kept (DriverCache), as the power-state poller runs;
  median of --rounds.
- ipmitool: `ipmitool -I lanplus -C 3 ... chassis power status` for each BMC one after the other, the
  loop an operator would script (each call logs in and out).
- With --redfish N: one `sushy-emulator --fake` with N systems, Kiln warm in parallel versus `curl`
  serially (GET of each system, which carries PowerState).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.power import power_nodes
from appliance.bmc.probe import DriverCache
from appliance.config import Settings
from appliance.db import create_database
from appliance.models import Node
from tests.bmcsim import IPMISimFarm, SushySim


def _nodes(settings: Settings, url: str, specs: list[tuple[str, str, str, str]]) -> list[int]:
    db = create_database(url)
    ids = []
    with db.session() as session:
        for name, address, user, password in specs:
            node = Node(name=name)
            session.add(node)
            session.flush()
            set_node_bmc(session, settings, node, address=address, username=user, password=password)
            ids.append(node.id)
    db.dispose()
    return ids


def _kiln_rounds(
    settings: Settings, url: str, ids: list[int], workers: int, rounds: int
) -> tuple[float, list[float]]:
    db = create_database(url)
    started = time.perf_counter()
    results = power_nodes(db, settings, ids, "status", workers=workers)
    cold = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"kiln: {len(failed)} failed, first: {failed[0].error}")
    cache = DriverCache()
    power_nodes(db, settings, ids, "status", workers=workers, cache=cache)  # sessions up
    warm = []
    for _ in range(rounds):
        started = time.perf_counter()
        results = power_nodes(db, settings, ids, "status", workers=workers, cache=cache)
        warm.append(time.perf_counter() - started)
        assert all(r.ok for r in results)
    cache.close()
    db.dispose()
    return cold, warm


def _serial(commands: list[list[str]]) -> float:
    started = time.perf_counter()
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def _line(label: str, seconds: float, count: int) -> None:
    print(f"  {label:<44} {seconds:8.3f} s   {count / seconds:9.1f} calls/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bmcs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--redfish", type=int, default=0, help="also N Redfish systems (sushy-emulator)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-bench-bmc-") as tmp:
        base = Path(tmp)
        settings = Settings(state_dir=base / "state", secret_key="bench-only-secret")
        farm = IPMISimFarm(base / "ipmi", prefix="bench")
        try:
            started = time.perf_counter()
            farm.start(args.bmcs)
            print(f"{args.bmcs} ipmi_sim BMCs up in {time.perf_counter() - started:.1f} s")
            url = f"sqlite:///{base / 'kiln.db'}"
            ids = _nodes(
                settings, url, [(f"n{i}", b.address, b.username, b.password) for i, b in enumerate(farm.bmcs)]
            )
            serial = []
            kiln_cold: list[float] = []
            kiln_warm: list[float] = []
            commands = [
                ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(b.port),
                 "-U", b.username, "-P", b.password, "chassis", "power", "status"]
                for b in farm.bmcs
            ]  # fmt: skip
            for _ in range(args.rounds):  # alternate, so both see the same machine load
                serial.append(_serial(commands))
                cold, warm = _kiln_rounds(settings, url, ids, args.workers, 1)
                kiln_cold.append(cold)
                kiln_warm.extend(warm)
            n = args.bmcs
            print(f"IPMI power status of {n} BMCs (median of {args.rounds} rounds):")
            _line("ipmitool -C 3, serial (baseline)", statistics.median(serial), n)
            _line(f"kiln cold (login + status, {args.workers} workers)", statistics.median(kiln_cold), n)
            _line("kiln warm (sessions kept, as the poller)", statistics.median(kiln_warm), n)
            print(
                f"  speed-up over ipmitool: cold {statistics.median(serial) / statistics.median(kiln_cold):.1f}x, "
                f"warm {statistics.median(serial) / statistics.median(kiln_warm):.1f}x"
            )
        finally:
            farm.stop()

        if args.redfish:
            sim = SushySim(base / "sushy").start(systems=args.redfish)
            try:
                rf_url = f"sqlite:///{base / 'redfish.db'}"
                rf_ids = _nodes(
                    settings,
                    rf_url,
                    [(f"r{i}", sim.system_url(i), sim.username, sim.password) for i in range(args.redfish)],
                )
                curls = [
                    ["curl", "-sf", "-u", f"{sim.username}:{sim.password}", sim.system_url(i)]
                    for i in range(args.redfish)
                ]
                rf_serial, rf_warm = [], []
                for _ in range(args.rounds):
                    rf_serial.append(_serial(curls))
                    _, warm = _kiln_rounds(settings, rf_url, rf_ids, args.workers, 1)
                    rf_warm.extend(warm)
                print(f"Redfish power status of {args.redfish} systems on one sushy-emulator:")
                _line("curl, serial (baseline)", statistics.median(rf_serial), args.redfish)
                _line("kiln warm (sushy sessions kept)", statistics.median(rf_warm), args.redfish)
                print(
                    f"  speed-up over curl: {statistics.median(rf_serial) / statistics.median(rf_warm):.1f}x"
                )
            finally:
                sim.stop()


if __name__ == "__main__":
    main()
