"""Is the fleet converged? One answer shared by `GET /api/v2/anneal` and `kiln anneal wait|status`.

The verdict follows OpenCrowbar's `/api/v2/anneal`: any node-role in `error` means *failed* (409), any
node-role with work left (`todo`, `transition`, `blocked`) means *working* (202), otherwise
*converged* (200). `proposed` node-roles belong to uncommitted deployments and are nobody's work yet,
so they never hold the verdict back. Counts come from one GROUP BY on node_roles. A `todo` or
`blocked` node-role the annealer will not claim (its node not alive or not available, or outside the
node's target_role scope) is counted as `parked`, not as work: it waits for an operator, not for us.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, not_, select
from sqlalchemy.orm import Session

from appliance.annealer import states
from appliance.errors import NotFound
from appliance.models import AnnealerHeartbeat, Deployment, Node, NodeRole, Role, utcnow

CONVERGED = "converged"
WORKING = "working"
FAILED = "failed"

HTTP_STATUS = {CONVERGED: 200, WORKING: 202, FAILED: 409}

WORK_LEFT = ("todo", "transition", "blocked")
PARKED = "parked"
# the annealer service beats every 5 s; three missed beats mean it is gone
HEARTBEAT_FRESH_SECONDS = 15.0
ERRORS_SHOWN = 20


@dataclass
class AnnealStatus:
    status: str
    counts: dict[str, int]
    deployment: str | None = None
    annealers: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]

    @property
    def total(self) -> int:
        """Node-roles that are (or were) work: everything but `proposed`."""
        return sum(n for state, n in self.counts.items() if state != "proposed")

    @property
    def done(self) -> int:
        return self.counts.get("active", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "deployment": self.deployment,
            "counts": dict(self.counts),
            "total": self.total,
            "active": self.done,
            "annealers": self.annealers,
            "errors": list(self.errors),
        }


def verdict(counts: dict[str, int]) -> str:
    if counts.get("error", 0):
        return FAILED
    if any(counts.get(state, 0) for state in WORK_LEFT):
        return WORKING
    return CONVERGED


def anneal_status(session: Session, deployment: str | int | None = None) -> AnnealStatus:
    """Counts by state (of one deployment, by name or id, if given) and the verdict; NotFound for an
    unknown deployment."""
    query = select(NodeRole.state, func.count()).group_by(NodeRole.state)
    name = None
    dep_id = None
    if deployment is not None and str(deployment) != "":
        dep = _deployment(session, deployment)
        dep_id, name = dep.id, dep.name
        query = query.where(NodeRole.deployment_id == dep_id)
    counts = {state: int(n) for state, n in session.execute(query)}
    if counts.get("todo", 0) or counts.get("blocked", 0):
        _move_parked(session, counts, dep_id)
    status = AnnealStatus(status=verdict(counts), counts=counts, deployment=name)
    status.annealers = live_annealers(session)
    if status.status == FAILED:
        status.errors = _errors(session, dep_id)
    return status


def _move_parked(session: Session, counts: dict[str, int], deployment_id: int | None) -> None:
    """Move todo/blocked node-roles the claim would never pick (the claim's own node conditions and
    states.in_target_scope) from their state's count to `parked`."""
    runnable = and_(
        Node.alive.is_(True),
        Node.available.is_(True),
        states.in_target_scope(NodeRole.id, Node.target_role_id),
    )
    query = (
        select(NodeRole.state, func.count())
        .join(Node, Node.id == NodeRole.node_id)
        .where(NodeRole.state.in_(("todo", "blocked")), not_(runnable))
        .group_by(NodeRole.state)
    )
    if deployment_id is not None:
        query = query.where(NodeRole.deployment_id == deployment_id)
    for state, n in session.execute(query):
        counts[state] -= int(n)
        counts[PARKED] = counts.get(PARKED, 0) + int(n)
        if not counts[state]:  # like the GROUP BY: a state nobody is in is not listed
            del counts[state]


def _deployment(session: Session, key: str | int) -> Deployment:
    query = select(Deployment)
    if isinstance(key, int) or key.isdigit():
        query = query.where(Deployment.id == int(key))
    else:
        query = query.where(Deployment.name == key)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"deployment '{key}' not found", field="deployment")
    return found


def live_annealers(session: Session, now: dt.datetime | None = None) -> int:
    """Annealer processes whose heartbeat is recent: `working` with none of them will not progress."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=HEARTBEAT_FRESH_SECONDS)
    seen = session.scalars(select(AnnealerHeartbeat.seen_at)).all()
    # SQLite hands back naive datetimes (stored as UTC)
    return sum(1 for t in seen if (t if t.tzinfo else t.replace(tzinfo=dt.UTC)) >= cutoff)


def _errors(session: Session, deployment_id: int | None) -> list[dict[str, Any]]:
    query = (
        select(NodeRole.id, Node.name, Role.name, NodeRole.attempts, NodeRole.runlog)
        .join(Node, Node.id == NodeRole.node_id)
        .join(Role, Role.id == NodeRole.role_id)
        .where(NodeRole.state == "error")
        .order_by(NodeRole.id)
        .limit(ERRORS_SHOWN)
    )
    if deployment_id is not None:
        query = query.where(NodeRole.deployment_id == deployment_id)
    return [
        {"node_role": nr_id, "node": node, "role": role, "attempts": attempts, "last_log": _tail(log)}
        for nr_id, node, role, attempts, log in session.execute(query)
    ]


def _tail(text: str | None, lines: int = 3) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])
