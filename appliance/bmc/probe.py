"""Which driver a BMC needs, and the cache that keeps one driver (one session) per BMC.

Probing order: the Redfish service root first (it answers without credentials), then an RMCP
presence ping (ASF, DMTF DSP0136) for IPMI. A node's explicit `bmc_driver` skips probing.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

from appliance.bmc.base import BMCDriver, BMCTarget
from appliance.bmc.ipmi import IPMIDriver
from appliance.bmc.redfish import RedfishDriver
from appliance.errors import BMCUnreachable, InvalidInput

log = logging.getLogger(__name__)

DRIVERS: dict[str, type[BMCDriver]] = {"ipmi": IPMIDriver, "redfish": RedfishDriver}

# ASF presence ping: RMCP v6, seq 0xff, class ASF; IANA 4542; type 0x80 ping; tag; reserved; len 0
_RMCP_PING = bytes((0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x4B, 0x00, 0x00))


_probe_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    # probing sends no credentials, so the certificate is not checked; a bare context also skips
    # loading the system CA store, which costs ~50 ms per probe
    global _probe_tls
    if _probe_tls is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _probe_tls = context
    return _probe_tls


def _redfish_root(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url + "/redfish/v1/", timeout=timeout, context=_tls_context()) as rsp:
            body = json.loads(rsp.read(65536) or b"{}")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return isinstance(body, dict) and ("RedfishVersion" in body or "Systems" in body)


def _rmcp_pong(host: str, port: int, timeout: float) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror:
        return False
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)  # connected, so an ICMP port-unreachable surfaces as ECONNREFUSED
        deadline = time.monotonic() + timeout
        for attempt in range(2):  # UDP: one resend, both inside `timeout`
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining / (2 - attempt))
            try:
                sock.send(_RMCP_PING)
                data = sock.recv(128)
            except ConnectionRefusedError:
                return False  # ICMP port unreachable: nothing listens there
            except OSError:
                continue
            # pong: message type 0x40; after IANA and OEM fields, supported entities bit 7 = IPMI
            if len(data) >= 22 and data[8] == 0x40:
                return bool(data[20] & 0x80)
    return False


def resolve(target: BMCTarget, *, timeout: float = 3.0) -> BMCTarget:
    """`target` with its driver decided: its explicit driver, else Redfish if a service root answers
    (HTTPS; plain HTTP too on a non-standard port, as lab emulators use), else IPMI if it answers an
    RMCP presence ping. BMCUnreachable when neither does."""
    if target.driver:
        return target
    candidates = [replace(target, scheme="https", driver="redfish")]
    if target.port:
        candidates.append(replace(target, scheme="http", driver="redfish"))
    for candidate in candidates:
        if _redfish_root(candidate.base_url, timeout):
            log.info("bmc %s: Redfish service root found", candidate.describe())
            return candidate
    if _rmcp_pong(target.host, target.port or 623, timeout):
        log.info("bmc %s: answers an RMCP presence ping, using IPMI", target.describe())
        return replace(target, driver="ipmi")
    raise BMCUnreachable(
        f"BMC {target.host}{':' + str(target.port) if target.port else ''} answered neither a Redfish "
        "service root (HTTPS) nor an IPMI presence ping (UDP 623): check the address and that the BMC "
        "is powered and cabled"
    )


def probe(target: BMCTarget, *, timeout: float = 3.0) -> str:
    """The driver name `target` needs (see resolve())."""
    driver = resolve(target, timeout=timeout).driver
    assert driver is not None
    return driver


def make_driver(target: BMCTarget) -> BMCDriver:
    if target.driver not in DRIVERS:
        raise InvalidInput("bmc_driver", f"'{target.driver}' is not one of {', '.join(DRIVERS)}")
    return DRIVERS[target.driver](target)


class DriverCache:
    """One driver per BMC for the life of a process (CLI run, poller, web worker).

    The key is where the BMC is and who logs in; a changed password or driver replaces the driver
    (and so the session). Probing happens once per BMC.
    """

    def __init__(self, *, probe_timeout: float = 3.0) -> None:
        self._lock = threading.Lock()
        self._drivers: dict[tuple[str, int | None, str | None], tuple[BMCTarget, BMCDriver]] = {}
        self._probe_timeout = probe_timeout

    def get(self, target: BMCTarget) -> BMCDriver:
        key = (target.host, target.port, target.system_id)
        with self._lock:
            cached = self._drivers.get(key)
        if cached is not None:
            wanted, driver = cached
            if wanted == target:
                return driver
        resolved = resolve(target, timeout=min(self._probe_timeout, target.timeout))
        driver = make_driver(resolved)
        with self._lock:
            old = self._drivers.get(key)
            self._drivers[key] = (target, driver)
        if old is not None and old[1] is not driver:
            old[1].close()
        return driver

    def close(self) -> None:
        with self._lock:
            drivers, self._drivers = list(self._drivers.values()), {}
        for _, driver in drivers:
            driver.close()
