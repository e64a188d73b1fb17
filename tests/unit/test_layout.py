"""The shape of the repository: package layout, import contract, systemd units, Vagrantfile, scripts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# every service a package declares runs in a unit of its own
SERVICES = tuple(PYPROJECT["project"]["entry-points"]["kiln.services"])
UNITS = [f"kiln-{name}.service" for name in SERVICES] + ["kiln.target"]


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


# --- package layout -------------------------------------------------------------------------------


def test_top_level_folders_of_the_design_exist() -> None:
    for folder in ("appliance", "services", "web", "pxe", "discovery_image", "systemd", "bench"):
        assert (REPO / folder).is_dir(), folder
    for folder in ("unit", "integration", "e2e", "browser"):
        assert (REPO / "tests" / folder).is_dir(), folder
    assert (REPO / "Vagrantfile").is_file()


def test_no_grab_bag_modules() -> None:
    banned = {"utils.py", "helpers.py", "misc.py", "manager.py", "util.py", "common.py"}
    found = [
        str(path.relative_to(REPO))
        for package in ("appliance", "services", "web")
        for path in (REPO / package).rglob("*.py")
        if path.name in banned
    ]
    assert not found, f"name modules after what they serve: {found}"


def test_package_declares_python_311_the_kiln_command_and_every_service() -> None:
    project = PYPROJECT["project"]
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["kiln"] == "appliance.cli:main"
    services = project["entry-points"]["kiln.services"]
    assert {"web", "dhcp", "tftp", "dns", "annealer"} <= set(services)
    assert (BIN / "kiln").exists(), "the kiln console script is not installed in the venv"


def test_mypy_is_strict_on_the_core_and_the_services() -> None:
    overrides = PYPROJECT["tool"]["mypy"]["overrides"]
    strict = [o for o in overrides if o.get("strict")]
    assert any({"appliance.*", "services.*"} <= set(o["module"]) for o in strict)


def test_every_test_has_a_timeout_by_default() -> None:
    timeout = PYPROJECT["tool"]["pytest"]["ini_options"]["timeout"]
    assert 0 < int(timeout) <= 600
    ci = (REPO / ".ci" / "run").read_text()
    match = re.search(r"KILN_CI_TIMEOUT:-(\d+)m", ci)
    assert match and int(match.group(1)) + 2 <= 90, "CI must be bounded below 90 minutes"


# --- import contract -----------------------------------------------------------------------------


def test_import_contract_is_kept() -> None:
    result = _run([str(BIN / "lint-imports"), "--no-cache"], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contract_forbids_web_and_flask_outside_the_web() -> None:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    forbidden = {
        c["source_modules"][0]: set(c["forbidden_modules"]) for c in contracts if c["type"] == "forbidden"
    }
    assert {"web", "flask"} <= forbidden["services"]
    assert {"web", "flask"} <= forbidden["appliance"]


def test_import_contract_catches_a_service_importing_the_web(tmp_path: Path) -> None:
    for package in ("appliance", "services", "web"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "web" / "app.py").write_text("import flask\n")
    (tmp_path / "services" / "dhcp.py").write_text("from web import app\n")
    config = tmp_path / "pyproject.toml"
    config.write_text((REPO / "pyproject.toml").read_text())
    result = _run(
        [str(BIN / "lint-imports"), "--no-cache", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "services never import web or flask BROKEN" in result.stdout
    assert "services.dhcp -> web" in result.stdout


# --- systemd units -------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    """Key → every value it is given (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A filesystem root with the units installed as scripts/install-appliance installs them."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, root / "etc/systemd/system" / unit)
    venv_bin = root / "opt/kiln/venv/bin"
    venv_bin.mkdir(parents=True)
    for script in ("kiln", "gunicorn"):
        assert (BIN / script).exists(), f"{script} is not installed in the venv"
        shutil.copy(BIN / script, venv_bin / script)
    return root


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(unit_root: Path, unit: str) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: apt-get install systemd"
    result = _run(["systemd-analyze", "verify", f"--root={unit_root}", unit])
    # verify exits 0 on unknown keys but warns: any output is a defect in the unit
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_fails_when_the_command_is_missing(unit_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    (root / "opt/kiln/venv/bin/kiln").unlink()
    result = _run(["systemd-analyze", "verify", f"--root={root}", "kiln-dns.service"])
    assert result.returncode != 0
    assert "/opt/kiln/venv/bin/kiln" in result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_unit_is_hardened(service: str) -> None:
    unit = _unit(f"kiln-{service}.service")
    assert unit["User"] == ["kiln"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/lib/kiln"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
        assert unit[key] == ["yes"], key
    assert unit["PartOf"] == ["kiln.target"]
    assert unit["WantedBy"] == ["kiln.target"]


@pytest.mark.parametrize(
    ("service", "capabilities"),
    [
        ("web", {"CAP_NET_BIND_SERVICE"}),
        ("dhcp", {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}),
        ("ra", {"CAP_NET_RAW"}),
        ("tftp", {"CAP_NET_BIND_SERVICE"}),
        ("dns", {"CAP_NET_BIND_SERVICE"}),
        ("annealer", set()),
    ],
)
def test_each_service_gets_only_the_capabilities_it_needs(service: str, capabilities: set[str]) -> None:
    unit = _unit(f"kiln-{service}.service")
    assert set(" ".join(unit["AmbientCapabilities"]).split()) == capabilities
    assert set(" ".join(unit["CapabilityBoundingSet"]).split()) == capabilities


@pytest.mark.parametrize("service", SERVICES)
def test_systemd_rates_each_unit_exposure_as_ok(unit_root: Path, service: str) -> None:
    result = _run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={unit_root}", f"kiln-{service}.service"]
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_target_starts_every_service_and_each_unit_runs_its_entry_point() -> None:
    target = _unit("kiln.target")
    assert set(" ".join(target["Wants"]).split()) >= {f"kiln-{s}.service" for s in SERVICES}
    assert sorted(p.name for p in (REPO / "systemd").glob("kiln-*.service")) == sorted(UNITS[:-1])
    for service in SERVICES:
        exec_start = _unit(f"kiln-{service}.service")["ExecStart"][0]
        if service == "web":
            assert "gunicorn" in exec_start and "web.wsgi:app" in exec_start
        else:
            assert exec_start == f"/opt/kiln/venv/bin/kiln serve --only {service}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_web_unit_command_serves_the_app_on_the_bind_from_kiln_toml(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "kiln.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[web]\nbind = "127.0.0.1:{port}"\n')
    env = {**os.environ, "KILN_CONFIG": str(config)}
    subprocess.run(
        [str(BIN / "kiln"), "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120
    )
    command = _unit("kiln-web.service")["ExecStart"][0].split()
    assert command[0] == "/opt/kiln/venv/bin/gunicorn"
    command = [
        str(BIN / "gunicorn"),
        *[
            a.replace("/etc/kiln/gunicorn.conf.py", str(REPO / "systemd/gunicorn.conf.py"))
            for a in command[1:]
        ],
    ]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        proc.stderr.read().decode() if proc.stderr else "gunicorn died"
                    ) from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- Vagrantfile and scripts ---------------------------------------------------------------------


def test_vagrantfile_is_valid_ruby() -> None:
    assert shutil.which("ruby"), "ruby is missing: apt-get install ruby"
    result = _run(["ruby", "-c", str(REPO / "Vagrantfile")])
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


# Evaluates the Vagrantfile with a recorder standing in for Vagrant's configuration objects: every
# call is logged, so the test sees which machines, networks and provider settings it declares.
VAGRANT_RECORDER = r"""
require "json"
LOG = []
class Recorder
  def initialize(path) = @path = path
  def method_missing(name, *args, **kwargs, &block)
    LOG << {path: @path, call: name.to_s, args: args.map(&:to_s), kwargs: kwargs.transform_values(&:to_s)}
    child = Recorder.new("#{@path}.#{name}#{args.first.is_a?(String) ? "[#{args.first}]" : ""}")
    block.call(*Array.new([block.arity, 1].max) { |i| i.zero? ? child : Recorder.new("#{@path}.override") }) if block
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.configure(version, &block)
    raise "Vagrantfile must use configuration version 2" unless version == "2"
    block.call(Recorder.new("config"))
  end
end
load ARGV[0]
puts JSON.generate(LOG)
"""


def test_vagrantfile_declares_an_admin_box_and_two_pxe_nodes(tmp_path: Path) -> None:
    recorder = tmp_path / "recorder.rb"
    recorder.write_text(VAGRANT_RECORDER)
    result = _run(["ruby", str(recorder), str(REPO / "Vagrantfile")], env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    log = json.loads(result.stdout)
    defined = [c["args"][0] for c in log if c["call"] == "define"]
    assert defined == ["admin", "node1", "node2"]
    calls = {(c["path"], c["call"]) for c in log}
    for node in ("node1", "node2"):
        provider = f"config.vm.define[{node}].vm.provider"
        assert (provider, "boot") in calls
        boots = [c["args"][0] for c in log if c["path"] == provider and c["call"] == "boot"]
        assert boots[0] == "network", "a node must boot from the network first"
    networks = [c for c in log if c["call"] == "network" and c["args"][0] == "private_network"]
    assert len(networks) >= 3
    for net in networks:
        if "libvirt__network_name" in net["kwargs"]:
            assert net["kwargs"]["libvirt__network_name"] == "kiln-pxe"
            assert net["kwargs"]["libvirt__dhcp_enabled"] == "false", "only Kiln may serve DHCP there"
    # each node has one NIC per provider, on the PXE network, never configured by Vagrant
    node_nics = [n for n in networks if n["path"].startswith("config.vm.define[node")]
    assert len(node_nics) == 4 and all(n["kwargs"]["auto_config"] == "false" for n in node_nics), node_nics
    provision = [c for c in log if c["call"] == "provision"]
    assert provision and "scripts/install-appliance" in provision[0]["kwargs"]["inline"]
    inline = provision[0]["kwargs"]["inline"]
    assert _run(["bash", "-n"], input=inline).returncode == 0


@pytest.mark.parametrize(
    "script", ["scripts/bootstrap", "scripts/run-tests", "scripts/install-appliance", ".ci/run"]
)
def test_shell_scripts_parse_and_are_executable(script: str) -> None:
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = _run(["bash", "-n", str(path)])
    assert result.returncode == 0, result.stderr


def test_run_tests_fails_when_pytest_collects_nothing() -> None:
    result = _run(
        [
            str(REPO / "scripts/run-tests"),
            "--no-lint",
            # the last -n wins: no workers to start for a run that selects nothing
            "-n",
            "0",
            "-k",
            "no_test_is_named_like_this",
            "tests/unit/test_layout.py",
        ],
        cwd=REPO,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--interface and --address are required"),
        (["--interface", "nosuchnic0", "--address", "10.40.0.2/24"], "no interface 'nosuchnic0'"),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_install_appliance_refuses_bad_arguments_before_touching_the_machine(
    args: list[str], message: str
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test checks the root path of scripts/install-appliance: run the suite as root")
    result = _run([str(REPO / "scripts/install-appliance"), *args])
    assert result.returncode == 2
    assert message in result.stderr


def test_a_wheel_install_carries_bootenvs_templates_agent_barclamp_scripts_and_migrations(
    tmp_path: Path,
) -> None:
    # built offline with the venv's setuptools, installed into a bare directory, used from elsewhere:
    # what appliance/ looks up beside itself must be in the wheel, not only in a source checkout
    subprocess.run(
        [
            str(BIN / "pip"),
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp_path / "w"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "w").glob("kiln-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [str(BIN / "pip"), "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import json, appliance.pxe as p, appliance.annealer.barclamps as b, appliance.db.migrate as m\n"
        "lib = p.PxeLibrary()\n"
        "print(json.dumps([p.__file__, sorted(lib.shipped), (b.CORE_DIR / 'scripts' / 'ntp-client.sh').is_file(),\n"
        "    len(list((m.MIGRATIONS / 'versions').glob('0*.py')))]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    where, bootenvs, script, migrations = json.loads(done.stdout)
    assert where.startswith(str(target))
    assert {"discovery", "local"} <= set(bootenvs)
    assert script
    assert migrations >= 5
    agent = target / "discovery_image" / "agent"
    assert os.access(agent / "kiln-agent", os.X_OK) and (target / "discovery_image" / "build.py").is_file()
