"""Boot-loop detection: a machine that fetches the same boot step again and again without its agent
ever calling in is stuck (a kernel that panics, a disk that will not boot, a token that never works).

Every boot step a node fetches is a BootFetch row. When one step reaches LOOP_FETCHES fetches within
LOOP_WINDOW and no agent contact since the first of them, the node is flagged (state `error`, its
`last_boot_step` naming the step) and an Event says which step it loops on. A machine not yet known as a
node gets the Event alone, keyed by its MAC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from appliance import events, nodes
from appliance.models import BootFetch, Node, utcnow

LOOP_FETCHES = 5
LOOP_WINDOW = dt.timedelta(minutes=10)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def record_fetch(session: Session, mac: str, step: str, *, now: dt.datetime | None = None) -> bool:
    """Note that `mac` fetched `step`; True when this fetch shows a boot loop (flagged once per loop)."""
    now = now or utcnow()
    mac = nodes.normalize_mac(mac)
    window_start = now - LOOP_WINDOW
    # rows older than the window can never count again; dropping them keeps the table small
    session.execute(delete(BootFetch).where(BootFetch.mac == mac, BootFetch.at < window_start))
    session.add(BootFetch(mac=mac, step=step, at=now))
    node = nodes.node_by_mac(session, mac)
    since = window_start
    if node is not None:
        node.last_boot_step = step
        if node.last_agent_contact is not None and _aware(node.last_agent_contact) > since:
            since = _aware(node.last_agent_contact)
    session.flush()
    count = session.scalar(
        select(func.count()).where(BootFetch.mac == mac, BootFetch.step == step, BootFetch.at > since)
    )
    if count != LOOP_FETCHES:
        return False
    _flag(session, node, mac, step, int(count))
    return True


def _flag(session: Session, node: Node | None, mac: str, step: str, count: int) -> None:
    minutes = int(LOOP_WINDOW.total_seconds() // 60)
    message = f"boot loop on step '{step}': fetched {count} times in {minutes} min without agent contact"
    if node is not None:
        node.state = "error"
        node.last_boot_step = step
        message = f"node {node.name} ({mac}): {message}"
    else:
        message = f"{mac}: {message}"
    events.record(
        session,
        "node.boot_loop",
        subject_type="node" if node is not None else "mac",
        subject_id=node.id if node is not None else None,
        actor="boot",
        message=message,
        data={"mac": mac, "step": step, "fetches": count, "window_minutes": minutes},
    )
