"""`kiln lab`: the whole appliance on one machine, wired only to a bridge of its own.

    kiln lab [--nodes N]

1. builds a network namespace with a bridge (10.77.0.1/24) and a veth to the host (appliance/lab);
2. keeps its state in ./var/lab (or $KILN_STATE_DIR): SQLite, the generated kiln.toml, secrets;
3. creates the lab networks (admin with host + dynamic ranges, bmc) and the first admin user;
4. runs `kiln serve` inside the namespace: DHCP bound to the bridge only, the web on <port> there;
5. forwards the host's 127.0.0.1:<port> to that web, prints the URL and the admin's credentials;
6. with --nodes N, starts N QEMU machines that netboot on the bridge;
7. on Ctrl-C / SIGTERM stops everything and removes the namespace, bridge and veth.

Every name is an option with a KILN_LAB_* variable, so a test can run a lab next to a real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from appliance.cli.base import CliContext, main, pass_cli
from appliance.db import create_database
from appliance.lab.forward import TcpForwarder
from appliance.lab.network import LabError, LabNetwork
from appliance.lab.nodes import LabNodes
from appliance.lab.seed import ensure_admin, seed_networks

DOMAIN = "kiln.lab"
READY_SECONDS = 90.0
STOP_SECONDS = 20.0


@dataclass(frozen=True)
class LabOptions:
    net: LabNetwork
    port: int
    state_dir: Path
    metrics_port: int

    @property
    def config_path(self) -> Path:
        return self.state_dir / "kiln.toml"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.state_dir / 'kiln.db'}"

    @property
    def web_url(self) -> str:
        return f"http://{self.net.ns_link_address}:{self.port}"


def lab_config(opts: LabOptions) -> str:
    """The kiln.toml `kiln serve` reads inside the namespace (kept in the state dir to inspect)."""
    net = opts.net
    return "\n".join(
        [
            "# Written by `kiln lab` at every start; edits are overwritten.",
            f'state_dir = "{opts.state_dir}"',
            f'database_url = "{opts.database_url}"',
            f'admin_domain = "{DOMAIN}"',
            f'advertise_address = "{net.kiln_address}"',
            "[web]",
            f'bind = "0.0.0.0:{opts.port}"',
            f"port = {opts.port}",
            "[dhcp]",
            f'interfaces = ["{net.bridge}"]',
            "[tftp]",
            f'root = "{opts.state_dir / "tftp"}"',
            "[dns]",
            'bind = "0.0.0.0"',
            # lab nodes reach nothing but Kiln: no forwarding to the host's resolvers
            "upstreams = []",
            "[metrics]",
            'bind = "0.0.0.0"',
            f"port = {opts.metrics_port}",
            "",
        ]
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_lab(opts: LabOptions) -> None:
    """Refuse to start next to a running lab of this state dir; clean up after one that was killed."""
    if opts.pid_path.exists():
        try:
            previous = json.loads(opts.pid_path.read_text())
        except ValueError:
            previous = {}
        if previous.get("pid") and _pid_alive(int(previous["pid"])):
            raise LabError(f"a lab already runs from {opts.state_dir} (pid {previous['pid']})")
        stale = LabNetwork(
            namespace=previous.get("namespace", opts.net.namespace),
            bridge=previous.get("bridge", opts.net.bridge),
        )
        stale.delete()
        opts.pid_path.unlink()


def build_discovery_image(state_dir: Path) -> str | None:
    """Build (or find cached) the discovery image lab nodes boot; None on success, else why not.

    The builder lives in the source checkout (discovery_image/, not part of the installed package)
    and is run as a program, so appliance/ does not import it.
    """
    source = Path(__file__).resolve().parents[2]
    if not (source / "discovery_image" / "build.py").exists():
        return f"no discovery image builder in {source} (run the lab from a source checkout)"
    # the web serves <state_dir>/discovery/current; a shared cache (KILN_DISCOVERY_CACHE: several labs,
    # the tests) is linked there instead of building one image per state dir
    cache = state_dir / "discovery"
    shared = os.environ.get("KILN_DISCOVERY_CACHE")
    if shared and not cache.exists() and not cache.is_symlink():
        Path(shared).mkdir(parents=True, exist_ok=True)
        cache.symlink_to(Path(shared).resolve())
    result = subprocess.run(
        [sys.executable, "-m", "discovery_image.build", "--cache", str(cache)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode not in (0, 2):  # 2: built, but larger than its size goal
        lines = (result.stderr or result.stdout).strip().splitlines()
        return lines[-1] if lines else f"discovery image build failed ({result.returncode})"
    return None


class Lab:
    """The lab's pieces, started in order and stopped in reverse, whatever fails in between."""

    def __init__(self, opts: LabOptions) -> None:
        self.opts = opts
        self.forwarder: TcpForwarder | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.nodes = LabNodes(opts.net, opts.state_dir / "nodes")
        self.stop_requested = threading.Event()
        self.signal_name: str | None = None
        # stop() removes only what this lab built: never another lab's namespace or pid file
        self.built_network = False
        self.web_error: str | None = None
        self.discovery_error: str | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def start(self, node_count: int) -> None:
        opts = self.opts
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        clear_stale_lab(opts)
        # bind the host port first: failing here leaves nothing to clean up
        self.forwarder = TcpForwarder(("127.0.0.1", opts.port), (opts.net.ns_link_address, opts.port))
        opts.net.create()
        self.built_network = True
        opts.pid_path.write_text(
            json.dumps({"pid": os.getpid(), "namespace": opts.net.namespace, "bridge": opts.net.bridge})
        )
        opts.config_path.write_text(lab_config(opts))
        self.discovery_error = build_discovery_image(opts.state_dir)
        db = create_database(opts.database_url)
        try:
            seed_networks(db, opts.net, DOMAIN)
            self.credentials = ensure_admin(db, opts.state_dir)
        finally:
            db.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        env["KILN_CONFIG"] = str(opts.config_path)
        kiln = str(Path(sys.executable).parent / "kiln")
        # its own session: Ctrl-C reaches only the lab, which stops serve in order
        self.serve = subprocess.Popen(opts.net.command([kiln, "serve"]), env=env, start_new_session=True)
        self.forwarder.start()
        self.web_error = self.wait_for_web()
        if node_count:
            self.nodes.start(node_count)

    def wait_for_web(self) -> str | None:
        """None once the web answers; otherwise why it will not."""
        assert self.serve is not None
        deadline = time.monotonic() + READY_SECONDS
        beat = self.opts.state_dir / "run" / f"serve-{self.serve.pid}.json"
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if self.serve.poll() is not None:
                return f"kiln serve exited with code {self.serve.returncode}"
            try:
                with urllib.request.urlopen(f"{self.opts.web_url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return None
            except (OSError, urllib.error.URLError):
                pass
            if beat.exists():
                try:
                    state = json.loads(beat.read_text())
                except ValueError:
                    state = {}
                services = state.get("services", {})
                if services and services.get("web") != "active":
                    return str(state.get("errors", {}).get("web", "the web service is not installed"))
            time.sleep(0.2)
        return f"the web did not answer within {READY_SECONDS:.0f} s"

    def wait(self) -> int:
        assert self.serve is not None
        while not self.stop_requested.wait(0.5):
            if self.serve.poll() is not None:
                click.echo(f"kiln lab: kiln serve exited with code {self.serve.returncode}", err=True)
                return self.serve.returncode or 1
        return 0

    def stop(self) -> int:
        """Stop nodes, services and the forwarder, remove the network; the serve process's exit code."""
        code = 0
        self.nodes.stop()
        if self.serve is not None:
            if self.serve.poll() is None:
                self.serve.send_signal(signal.SIGTERM)
            try:
                code = self.serve.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                click.echo(
                    f"kiln lab: kiln serve did not stop within {STOP_SECONDS:.0f} s; killing it", err=True
                )
                self.serve.kill()
                self.serve.wait()
                code = 1
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.built_network:
            self.opts.net.delete()
            self.opts.pid_path.unlink(missing_ok=True)
        return code

    def banner(self) -> str:
        opts, net, creds = self.opts, self.opts.net, self.credentials
        password = creds.password if creds.created or creds.password else "(unchanged)"
        lines = [
            "",
            "Kiln lab is running.",
            f"  web        http://127.0.0.1:{opts.port}/   (from lab machines: http://{net.kiln_address}:{opts.port}/)",
            f"  user       {creds.username}",
            f"  password   {password}" + ("" if creds.created else "   (from the first start)"),
            f"  network    bridge {net.bridge} in namespace {net.namespace}, Kiln at {net.kiln_address}, "
            f"{net.subnet}; DHCP serves only this bridge",
            f"  state      {opts.state_dir} (SQLite)   config {opts.config_path}",
            f"  metrics    http://{net.ns_link_address}:{opts.metrics_port}/metrics",
            f"  nodes      {len(self.nodes.nodes)} QEMU node(s)"
            + (
                f", consoles in {self.nodes.directory}"
                if self.nodes.nodes
                else " (start some with --nodes N)"
            ),
            "  status     KILN_CONFIG=" + str(opts.config_path) + " kiln status",
            "Stop with Ctrl-C: the namespace, bridge and veth are removed.",
        ]
        if self.web_error:
            lines.insert(2, f"  WARNING    the web is not up: {self.web_error}")
        if self.discovery_error:
            lines.insert(
                2, f"  WARNING    no discovery image, nodes cannot be discovered: {self.discovery_error}"
            )
        return "\n".join(lines)


@main.command("lab")
@click.option("--nodes", default=0, show_default=True, type=click.IntRange(0, 32), help="QEMU nodes to boot.")
@click.option(
    "--port", envvar="KILN_LAB_PORT", default=8080, show_default=True, type=click.IntRange(1, 65535)
)
@click.option("--namespace", envvar="KILN_LAB_NAMESPACE", default="kiln-lab", show_default=True)
@click.option("--bridge", envvar="KILN_LAB_BRIDGE", default="kilnbr0", show_default=True)
@click.option("--subnet", envvar="KILN_LAB_SUBNET", default="10.77.0.0/24", show_default=True)
@click.option(
    "--link", envvar="KILN_LAB_LINK", default="169.254.77.0/30", show_default=True, help="Host-namespace /30."
)
@click.option("--metrics-port", envvar="KILN_LAB_METRICS_PORT", default=9670, show_default=True, type=int)
@click.option("--cleanup", is_flag=True, help="Remove the network a killed lab left behind, then exit.")
@pass_cli
def lab_command(
    cli: CliContext,
    nodes: int,
    port: int,
    namespace: str,
    bridge: str,
    subnet: str,
    link: str,
    metrics_port: int,
    cleanup: bool,
) -> None:
    """Run Kiln in lab mode: its own network namespace and bridge, web on 127.0.0.1:<port>."""
    state_dir = Path(os.environ["KILN_STATE_DIR"]) if "KILN_STATE_DIR" in os.environ else Path("var/lab")
    opts = LabOptions(
        net=LabNetwork(namespace=namespace, bridge=bridge, subnet=subnet, link=link),
        port=port,
        state_dir=state_dir.resolve(),
        metrics_port=metrics_port,
    )
    if os.geteuid() != 0:
        raise LabError("lab mode creates a network namespace and needs root: sudo .venv/bin/kiln lab")
    if cleanup:
        clear_stale_lab(opts)
        opts.net.delete()
        click.echo(f"removed namespace {namespace} and its links")
        return
    lab = Lab(opts)
    previous = {sig: signal.signal(sig, lab._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        lab.start(nodes)
        click.echo(lab.banner())
        sys.stdout.flush()
        code = lab.wait()
    finally:
        stopped = lab.stop()
        code = code or stopped
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(
        f"kiln lab: stopped{f' ({lab.signal_name})' if lab.signal_name else ''}; namespace removed", err=True
    )
    if code:
        raise click.exceptions.Exit(code)
