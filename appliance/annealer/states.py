"""Node-role states: the one table of allowed transitions and the one function that changes state.

Nobody assigns `NodeRole.state` anywhere else (STYLE: a declarative state machine, as Ironic's
common/states.py). `transition()` is set-based: one UPDATE … RETURNING moves every matching row from
one state to another and one INSERT writes an Event per moved row, so the annealer can move a batch of
a thousand node-roles in two statements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, and_, exists, or_, select, update
from sqlalchemy.orm import Session

from appliance.annealer.bulk import dialect_of, ids_value, in_ids, insert_rows
from appliance.errors import IllegalTransition, NotFound
from appliance.models import Event, Node, NodeRole, NodeRoleEdge

PROPOSED = "proposed"
TODO = "todo"
TRANSITION = "transition"
ACTIVE = "active"
BLOCKED = "blocked"
ERROR = "error"

STATES = (PROPOSED, TODO, TRANSITION, ACTIVE, BLOCKED, ERROR)

# from-state -> the states it may move to. Anything may go back to `proposed` (OpenCrowbar's propose!).
# `transition -> todo|blocked` is re-annealing (or lease expiry) of a running node-role: its result is
# then discarded by the runner, whose write is guarded on `state = 'transition'`.
ALLOWED: Mapping[str, frozenset[str]] = {
    PROPOSED: frozenset({TODO, BLOCKED}),
    TODO: frozenset({TRANSITION, BLOCKED, PROPOSED}),
    TRANSITION: frozenset({ACTIVE, ERROR, TODO, BLOCKED, PROPOSED}),
    ACTIVE: frozenset({TODO, BLOCKED, PROPOSED}),
    BLOCKED: frozenset({TODO, PROPOSED}),
    ERROR: frozenset({TODO, BLOCKED, PROPOSED}),
}

_table = cast(Table, NodeRole.__table__)
_events = cast(Table, Event.__table__)
_edges = cast(Table, NodeRoleEdge.__table__)


def not_ready() -> ColumnElement[bool]:
    """True for a node-role with a parent that is not active: the definition of `blocked`.

    Correlated to the node_roles row being updated or selected.
    """
    parent = _table.alias("parent")
    return exists().where(
        _edges.c.child_id == _table.c.id, _edges.c.parent_id == parent.c.id, parent.c.state != ACTIVE
    )


def in_target_scope(node_role_id: Any, node_target_role_id: Any) -> ColumnElement[bool]:
    """True for a node-role its node may run: the node has no `target_role`, or the node-role is its
    node's target node-role or an ancestor of it (OpenCrowbar's target_role: anneal up to a role).

    One uncorrelated recursive walk up the edges from every targeted node-role: empty (and cheap) when
    no node has a target.
    """
    nodes = cast(Table, Node.__table__)
    seed = (
        select(_table.c.id.label("id"))
        .join(nodes, and_(nodes.c.id == _table.c.node_id, nodes.c.target_role_id == _table.c.role_id))
        .cte("target_scope", recursive=True)
    )
    walk = seed.union(select(_edges.c.parent_id).join(seed, _edges.c.child_id == seed.c.id))
    return or_(node_target_role_id.is_(None), node_role_id.in_(select(walk.c.id)))


def check(from_state: str, to_state: str) -> None:
    """Raise IllegalTransition unless the table allows from_state -> to_state."""
    if from_state not in ALLOWED:
        raise IllegalTransition(f"unknown node-role state '{from_state}'")
    if to_state not in ALLOWED[from_state]:
        raise IllegalTransition(f"node-role may not go from {from_state} to {to_state}")


def transition(
    db: Session | Connection,
    from_state: str,
    to_state: str,
    *,
    ids: Sequence[int] | None = None,
    where: ColumnElement[bool] | None = None,
    values: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    actor: str = "annealer",
    reason: str = "",
) -> list[int]:
    """Move every node-role in `from_state` (restricted to `ids` and/or `where`) to `to_state`.

    Rows no longer in `from_state` (another process moved them first) are left alone; the ids that did
    move are returned and each gets one `noderole.state` Event. `values` sets other columns in the same
    UPDATE (wall, claimed_by, run_count...).
    """
    rows = transition_rows(
        db,
        from_state,
        to_state,
        ids=ids,
        where=where,
        values=values,
        params=params,
        actor=actor,
        reason=reason,
    )
    return [row[0] for row in rows]


def transition_rows(
    db: Session | Connection,
    from_state: str,
    to_state: str,
    *,
    ids: Sequence[int] | None = None,
    where: ColumnElement[bool] | None = None,
    values: Mapping[str, Any] | None = None,
    returning: Sequence[Any] = (),
    params: Mapping[str, Any] | None = None,
    actor: str = "annealer",
    reason: str = "",
) -> list[tuple[Any, ...]]:
    """transition() returning (id, *returning) for each moved row: the claim reads its batch this way."""
    check(from_state, to_state)
    if ids is not None and not ids:
        return []
    clauses: list[ColumnElement[bool]] = [_table.c.state == from_state]
    bound: dict[str, Any] = dict(params or {})
    if ids is not None:
        dialect = dialect_of(db)
        clauses.append(in_ids(_table.c.id, "transition_ids", dialect))
        bound["transition_ids"] = ids_value(ids, dialect)
    if where is not None:
        clauses.append(where)
    stmt = (
        update(_table)
        .where(and_(*clauses))
        .values(state=to_state, **(values or {}))
        .returning(_table.c.id, *returning)
        .execution_options(synchronize_session=False)
    )
    # the returned columns are plain integers: the DBAPI's rows need none of SQLAlchemy's processing
    moved: list[tuple[Any, ...]] = db.execute(stmt, bound).cursor.fetchall()  # type: ignore[attr-defined]
    record_transitions(db, [row[0] for row in moved], from_state, to_state, actor=actor, reason=reason)
    return moved


def record_transitions(
    db: Session | Connection,
    ids: Iterable[int],
    from_state: str,
    to_state: str,
    *,
    actor: str,
    reason: str = "",
) -> None:
    now = dt.datetime.now(dt.UTC)
    data: dict[str, Any] = {"from": from_state, "to": to_state}
    if reason:
        data["reason"] = reason
    message = f"{from_state} -> {to_state}"
    constants = {
        "at": now,
        "actor": actor,
        "action": "noderole.state",
        "subject_type": "node_role",
        "message": message,
        "data": data,
    }
    insert_rows(db, _events, ("subject_id",), [(i,) for i in ids], constants)


def transition_one(
    session: Session,
    node_role_id: int,
    to_state: str,
    *,
    values: Mapping[str, Any] | None = None,
    actor: str = "system",
    reason: str = "",
) -> None:
    """Move one node-role, raising IllegalTransition if its current state may not go to `to_state`."""
    current = session.execute(
        _table.select().with_only_columns(_table.c.state).where(_table.c.id == node_role_id)
    ).scalar()
    if current is None:
        raise NotFound(f"node-role {node_role_id} not found")
    check(current, to_state)
    moved = transition(
        session, current, to_state, ids=[node_role_id], values=values, actor=actor, reason=reason
    )
    if not moved:
        raise IllegalTransition(f"node-role {node_role_id} changed state concurrently; try again")
