"""pyghmi plumbing for the IPMI driver: one shared session per BMC and user, a bounded login, and
workarounds for two pyghmi 1.6 bugs measured against ipmi_sim (see each function)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session

from appliance.bmc.base import BMCTarget

# pyghmi's completion code for "no answer"
TIMEOUT_CODE = 0xFFFF

_wakeup_fix_lock = threading.Lock()
_wakeup_fixed = False


def fix_pyghmi_wakeup_race() -> None:
    """Stop pyghmi from sleeping on a reply it already has.

    pyghmi 1.6's Session.awaitresponse() sends, then parks in _io_wait() until its I/O thread sees
    a packet from the BMC. A BMC that answers within ~0.1 ms (ipmi_sim on loopback, measured) has its
    reply read into the session's queue *before* the caller parks, so the caller sleeps until the
    0.5-1 s retransmit timer: every Get User Name took 0.55-1.0 s, and 63 of them made one user
    listing take 30 s. The wrapper returns at once when a reply for that BMC is already queued.
    """
    global _wakeup_fixed
    with _wakeup_fix_lock:
        if _wakeup_fixed:
            return
        original = ipmi_session._io_wait
        seen = threading.local()

        def io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> Any:
            if myaddr is not None and evq is None:
                handlers = ipmi_session.Session.bmc_handlers.get(myaddr, {})
                queued = [sess.pktqueue[0] for sess in list(handlers.values()) if sess.pktqueue]
                # once per queued packet and thread: a packet that belongs to another session on
                # the same BMC (another user) must not make this caller spin. The packets
                # themselves are kept, not their id(): a freed packet's id is soon reused.
                last = getattr(seen, "last", None) or []
                if queued and not (
                    len(queued) == len(last) and all(a is b for a, b in zip(queued, last, strict=True))
                ):
                    seen.last = queued
                    return None
            seen.last = None
            return original(timeout, myaddr, evq)

        ipmi_session._io_wait = io_wait
        _wakeup_fixed = True


@dataclass
class SharedSession:
    """The one pyghmi Command (RMCP+ session) of a BMC and user, shared by every driver for it.

    pyghmi itself hands a second Command() for the same BMC and credentials the first one's session,
    and that second login then hangs (measured: 10 s, every time); so Kiln keeps exactly one.
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    cmd: Any = None
    channel: int | None = None


_sessions_lock = threading.Lock()
_sessions: dict[tuple[str, int, str, str], SharedSession] = {}


def shared_session(target: BMCTarget) -> SharedSession:
    digest = hashlib.sha256(target.password.encode()).hexdigest()
    key = (target.host, target.port or 623, target.username, digest)
    with _sessions_lock:
        return _sessions.setdefault(key, SharedSession())


def login(target: BMCTarget) -> Any:
    """A logged-in pyghmi Command for `target`, or the exception pyghmi raised.

    pyghmi logs in inside Command() and gives up on a silent BMC only after its own ~5 s of
    retransmits; a helper thread holds the login to the target's timeout instead."""
    box: dict[str, Any] = {}
    forget_broken_sessions(target)

    def run() -> None:
        try:
            box["cmd"] = ipmi_command.Command(
                bmc=target.host,
                userid=target.username,
                password=target.password,
                port=target.port or 623,
                keepalive=True,
            )
        except BaseException as exc:  # handed to the caller's thread below
            box["exc"] = exc

    thread = threading.Thread(target=run, name=f"ipmi-login-{target.host}", daemon=True)
    thread.start()
    thread.join(target.timeout)
    if "cmd" in box:
        return box["cmd"]
    if "exc" in box:
        raise box["exc"]
    raise pyghmi_exc.IpmiException("timeout", TIMEOUT_CODE)


def forget_broken_sessions(target: BMCTarget) -> None:
    # pyghmi 1.6 files a session under (host, user-as-str, ...) while logging in but deletes it
    # under the user as bytes, so after a logout or a failed login the dead session stays filed
    # and the next Command() for the same BMC and user is handed that corpse. Drop them.
    port = target.port or 623
    pending = ipmi_session.Session.initting_sessions
    for key, sess in list(pending.items()):
        if key[0] == target.host and key[3] == port and getattr(sess, "broken", False):
            pending.pop(key, None)
