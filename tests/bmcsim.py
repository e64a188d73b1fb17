"""Simulated BMCs for tests and benchmarks: OpenIPMI `ipmi_sim` instances and a `sushy-emulator --fake`.

Everything listens on 127.0.0.1 on free ports, lives in a directory you give, and stops with `.stop()`
(use it from a fixture finalizer). A missing binary raises, so a test that needs one fails, never skips.

    farm = IPMISimFarm(tmp_path).start(3)          # three IPMI BMCs
    bmc = farm.bmcs[0]
    bmc.address, bmc.username, bmc.password        # "127.0.0.1:40123", "admin", "..."
    bmc.ipmitool("chassis", "power", "status")     # ipmitool -I lanplus -C 3 ... (the real client)
    bmc.power_file_state()                         # "on"/"off" as the simulated chassis has it

    redfish = SushySim(tmp_path).start(systems=2)  # one Redfish service, two systems
    redfish.system_url(0), redfish.username, redfish.password

Each ipmi_sim has a chassis_control script that keeps power and boot device in files of its directory:
that file is the "machine", what a test checks besides ipmitool. `extra_lan_conf` adds lines (for
example a `serial 15 ...` line wiring QEMU's ipmi-bmc-extern).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

IPMI_SIM = "ipmi_sim"
IPMITOOL = "ipmitool"

_CHASSIS_SCRIPT = """#!/bin/sh
# ipmi_sim chassis_control: "get <parm>..." prints "parm:value" lines, "set <parm> <value>..." stores
d="$(dirname "$0")"
op=$1; shift
echo "$op $*" >> "$d/chassis.log"
if [ "$op" = get ]; then
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$d/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$d/boot" 2>/dev/null || echo default)";;
    esac
  done
  exit 0
fi
while [ $# -gt 0 ]; do
  case $1 in
    power) echo "$2" > "$d/power"; shift 2;;
    boot) echo "$2" > "$d/boot"; shift 2;;
    shutdown) echo 0 > "$d/power"; shift 2;;   # the simulated OS obeys an ACPI soft-off at once
    *) shift 2;;
  esac
done
"""


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed (apt-get install openipmi ipmitool)")
    return path


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fru_blob(manufacturer: str, product: str, serial: str) -> bytes:
    """An IPMI FRU (Platform Management FRU Information Storage Definition v1.0) with a product area."""

    def field_bytes(text: str) -> bytes:
        raw = text.encode()[:63]
        return bytes([0xC0 | len(raw)]) + raw

    body = bytes([0x01, 0x00, 0x00])  # version, length (patched below), language English
    for text in (manufacturer, product, "SIM-1", "1.0", serial, "", ""):
        body += field_bytes(text)
    body += b"\xc1"
    body += b"\x00" * ((-(len(body) + 1)) % 8)
    body = body[:1] + bytes([(len(body) + 1) // 8]) + body[2:]
    body += bytes([(-sum(body)) & 0xFF])
    header = bytes([0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00])
    header += bytes([(-sum(header)) & 0xFF])
    return header + body


def sdr_temperature(number: int, name: str) -> bytes:
    """A Full Sensor Record (IPMI 2.0 §43.1) for a threshold temperature sensor: unsigned, degrees C,
    linear with M=1 and B=0, so the raw byte ipmi_sim is given is the reading."""
    text = name.encode()[:16]
    body = bytes(
        [
            0x20, 0x00, number,  # owner: the BMC, LUN 0, sensor number
            0x03, 0x01,  # entity: processor 1
            0x7F, 0x68, 0x01, 0x01,  # initialisation, capabilities, type temperature, threshold
            0, 0, 0, 0, 0, 0,  # event and threshold masks
            0x00, 0x01, 0x00,  # units: unsigned, degrees C, no modifier
            0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  # linear, M=1, B=0, accuracy, exponents
            0x00, 0x00, 0x00, 0x00, 0xFF, 0x00,  # flags, nominal, normal max/min, sensor max/min
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00,  # thresholds, hysteresis, reserved, OEM
            0xC0 | len(text),
        ]
    ) + text  # fmt: skip
    return bytes([0x00, 0x00, 0x51, 0x01, len(body)]) + body


@dataclass
class SimBMC:
    """One ipmi_sim instance."""

    name: str
    port: int
    directory: Path
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_hex(6))
    # the loopback address it listens on (ipmi_sim 1.0.13 takes only one): another 127.0.0.x lets a
    # test's bmc network hand out the address this BMC answers on
    listen: str = "127.0.0.1"
    # a QEMU machine as the chassis instead of the power/boot files: ipmi_sim runs `vm_startcmd` on
    # power-on (and kills it on power-off); the VM's ipmi-bmc-extern connects to vm_serial_port
    vm_startcmd: str | None = None
    vm_serial_port: int | None = None
    # temperature sensors (name: degrees C) in its SDR repository
    sensors: dict[str, int] = field(default_factory=lambda: {"CPU Temp": 45})
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.listen}:{self.port}"

    def ipmitool(self, *args: str, password: str | None = None, timeout: float = 15) -> str:
        """Run the real client (lanplus, cipher suite 3) and return its stdout; raise on failure."""
        cmd = [
            IPMITOOL, "-I", "lanplus", "-C", "3", "-H", self.listen, "-p", str(self.port),
            "-U", self.username, "-P", password or self.password, *args,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: rc={done.returncode} {done.stderr.strip()}")
        return done.stdout

    def power_file_state(self) -> str:
        path = self.directory / "power"
        return "on" if path.exists() and path.read_text().strip() == "1" else "off"

    def boot_file_device(self) -> str:
        path = self.directory / "boot"
        return path.read_text().strip() if path.exists() else "default"

    def set_power_file(self, on: bool) -> None:
        (self.directory / "power").write_text("1\n" if on else "0\n")

    def write_config(self, extra_lan_conf: str = "", extra_emu: str = "") -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "state").mkdir(exist_ok=True)
        script = self.directory / "chassis.sh"
        script.write_text(_CHASSIS_SCRIPT)
        script.chmod(0o755)
        auths = "none md2 md5 straight"
        (self.directory / "lan.conf").write_text(
            f'name "{self.name}"\n'
            "set_working_mc 0x20\n"
            "  startlan 1\n"
            f"    addr {self.listen} {self.port}\n"
            "    priv_limit admin\n"
            f"    allowed_auths_callback {auths}\n"
            f"    allowed_auths_user {auths}\n"
            f"    allowed_auths_operator {auths}\n"
            f"    allowed_auths_admin {auths}\n"
            f"    guid {secrets.token_hex(16)}\n"
            "  endlan\n"
            + (
                f"  serial 15 127.0.0.1 {self.vm_serial_port} codec VM\n"
                f'  startcmd "{self.vm_startcmd}"\n'
                "  startnow false\n  poweroff_wait 5\n  kill_wait 3\n"
                if self.vm_startcmd
                else f'  chassis_control "{script}"\n'
            )
            + f'  user 2 true "{self.username}" "{self.password}" admin 10 {auths}\n'
            f"{extra_lan_conf}\n"
        )
        fru = fru_blob("Kiln Lab", "SimNode", f"SN-{self.name}")
        mask = "0" * 15
        (self.directory / "bmc.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            f"mc_add_fru_data 0x20 0 {len(fru)} data {' '.join(f'0x{b:02x}' for b in fru)}\n"
            "sel_enable 0x20 1000 0x0a\n"
            + "".join(
                f"sensor_add 0x20 0 {n} 0x01 0x01\n"
                f"main_sdr_add 0x20 {' '.join(f'0x{b:02x}' for b in sdr_temperature(n, name))}\n"
                f"sensor_set_event_support 0x20 0 {n} enable scanning per-state {mask} {mask} {mask} {mask}\n"
                f"sensor_set_value 0x20 0 {n} {value} 0\n"
                for n, (name, value) in enumerate(self.sensors.items(), start=1)
            )
            + "mc_enable 0x20\n"
            f"{extra_emu}\n"
        )

    def start(self) -> SimBMC:
        binary = _require(IPMI_SIM)
        _require(IPMITOOL)
        log = (self.directory / "ipmi_sim.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "-n", "-c", str(self.directory / "lan.conf"), "-f", str(self.directory / "bmc.emu"),
             "-s", str(self.directory / "state")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ipmi_sim {self.name} exited: {(self.directory / 'ipmi_sim.log').read_text()}"
                )
            if rmcp_ping(self.listen, self.port, 0.1):
                return self
        self.stop()
        raise RuntimeError(f"ipmi_sim {self.name} did not answer on port {self.port} within 5 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def rmcp_ping(host: str, port: int, timeout: float) -> bool:
    ping = bytes((0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(ping, (host, port))
            return len(sock.recv(64)) >= 12
        except OSError:
            return False


class IPMISimFarm:
    """N ipmi_sim instances, each with its own port, password, config and state directory."""

    def __init__(self, base: Path, *, prefix: str = "bmc") -> None:
        self.base = Path(base)
        self.prefix = f"{prefix}{os.getpid()}"
        self.bmcs: list[SimBMC] = []

    def add(
        self,
        *,
        extra_lan_conf: str = "",
        extra_emu: str = "",
        password: str | None = None,
        listen: str = "127.0.0.1",
    ) -> SimBMC:
        index = len(self.bmcs)
        for _ in range(5):  # a free port can be taken by someone else before ipmi_sim binds it
            port = free_port()
            bmc = SimBMC(
                name=f"{self.prefix}-{index}",
                port=port,
                directory=self.base / f"ipmi{index}-{port}",
                listen=listen,
            )
            if password:
                bmc.password = password
            bmc.write_config(extra_lan_conf, extra_emu)
            try:
                bmc.start()
            except RuntimeError:
                bmc.stop()
                continue
            self.bmcs.append(bmc)
            return bmc
        raise RuntimeError("could not start ipmi_sim on a free port after 5 tries")

    def start(self, count: int) -> IPMISimFarm:
        try:
            for _ in range(count):
                self.add()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for bmc in self.bmcs:
            bmc.stop()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, as a BMC ships (self-signed)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc.sim")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.crt", directory / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class SushySim:
    """One `sushy-emulator --fake` with N fake systems behind HTTP basic auth (bcrypt htpasswd)."""

    directory: Path
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_hex(6))
    port: int = 0
    uuids: list[str] = field(default_factory=list)
    tls: bool = False  # serve HTTPS with a fresh self-signed certificate
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def system_url(self, index: int) -> str:
        return f"{self.url}/redfish/v1/Systems/{self.uuids[index]}"

    def start(self, systems: int = 1, *, power_state: str = "Off") -> SushySim:
        import bcrypt  # sushy-tools' own dependency: its htpasswd reader accepts only bcrypt

        binary = Path(sys.executable).with_name("sushy-emulator")
        if not binary.exists():
            raise RuntimeError("sushy-emulator is not installed (pip install sushy-tools)")
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.directory / "htpasswd").write_text(f"{self.username}:{digest}\n")
        tag = f"{os.getpid():08x}"
        self.uuids = [f"{tag}-0000-4000-8000-{i:012x}" for i in range(systems)]
        fakes = [
            {
                "uuid": uuid,
                "name": f"sim{i}",
                "power_state": power_state,
                "nics": [{"mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}", "ip": "192.0.2.1"}],
            }
            for i, uuid in enumerate(self.uuids)
        ]
        (self.directory / "emulator.conf").write_text(
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.directory / 'state')!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(self.directory / 'htpasswd')!r}\n"
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fakes!r}\n"
        )
        tls_args: list[str] = []
        if self.tls:
            cert, key = self_signed_certificate(self.directory)
            tls_args = ["--ssl-certificate", str(cert), "--ssl-key", str(key)]
        for _ in range(5):
            self.port = free_port(socket.SOCK_STREAM)
            log = (self.directory / "emulator.log").open("ab")
            self.process = subprocess.Popen(
                [str(binary), "--config", str(self.directory / "emulator.conf"), "--fake",
                 "-i", "127.0.0.1", "-p", str(self.port), *tls_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
            log.close()
            if self._wait_ready(20):
                return self
            self.stop()
        raise RuntimeError(
            f"sushy-emulator did not start: {(self.directory / 'emulator.log').read_text()[-2000:]}"
        )

    def _wait_ready(self, seconds: float) -> bool:
        import ssl
        import urllib.request

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/redfish/v1/", timeout=1, context=context) as rsp:
                    if rsp.status == 200:
                        return True
            except OSError:
                time.sleep(0.05)  # polling for the listener, with a deadline
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
