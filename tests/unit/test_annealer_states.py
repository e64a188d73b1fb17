"""The node-role state table: allowed transitions pass, every other one raises; each move is an Event."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.annealer import deployments, states
from appliance.db import Database
from appliance.errors import IllegalTransition
from appliance.models import Event, NodeRole
from tests.unit.annealer_world import load, make_nodes

ALLOWED_PAIRS = sorted((a, b) for a, targets in states.ALLOWED.items() for b in targets)
ILLEGAL_PAIRS = sorted(
    (a, b) for a, b in itertools.product(states.STATES, repeat=2) if (a, b) not in ALLOWED_PAIRS
)


def test_lifecycle_of_the_design_is_allowed() -> None:
    for a, b in [
        ("proposed", "todo"),
        ("proposed", "blocked"),
        ("blocked", "todo"),
        ("todo", "transition"),
        ("transition", "active"),
        ("transition", "error"),
        ("error", "todo"),
        ("active", "todo"),
        ("active", "proposed"),
    ]:
        states.check(a, b)


@pytest.mark.parametrize(("from_state", "to_state"), ILLEGAL_PAIRS)
def test_illegal_transition_raises(from_state: str, to_state: str) -> None:
    with pytest.raises(IllegalTransition):
        states.check(from_state, to_state)


def test_skipping_the_run_is_illegal() -> None:
    for a, b in [("todo", "active"), ("proposed", "active"), ("blocked", "transition"), ("error", "active")]:
        assert (a, b) in ILLEGAL_PAIRS


def _one_node_role(db: Database, tmp_path: Path) -> int:
    load(db, tmp_path, "roles:\n  - {name: solo}\n")
    node = make_nodes(db, 1)[0]
    with db.session() as session:
        deployment = deployments.create(session, "d")
        return deployments.add_nodes(session, deployment, [node], ["solo"])[0]


def test_illegal_transition_on_a_row_raises_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    nr_id = _one_node_role(db, tmp_path)
    with pytest.raises(IllegalTransition), db.session() as session:
        states.transition_one(session, nr_id, states.ACTIVE)
    with db.read_session() as session:
        assert session.get(NodeRole, nr_id).state == "proposed"  # type: ignore[union-attr]
        assert not session.scalars(select(Event).where(Event.action == "noderole.state")).all()


def test_each_moved_row_gets_one_event_and_others_are_left_alone(db: Database, tmp_path: Path) -> None:
    nr_id = _one_node_role(db, tmp_path)
    with db.session() as session:
        assert states.transition(session, states.PROPOSED, states.TODO, ids=[nr_id], actor="t") == [nr_id]
        # a second identical move finds the row no longer proposed: nothing moves, no event
        assert states.transition(session, states.PROPOSED, states.TODO, ids=[nr_id], actor="t") == []
    with db.read_session() as session:
        events = session.scalars(select(Event).where(Event.action == "noderole.state")).all()
        assert [(e.subject_id, e.data["from"], e.data["to"], e.actor) for e in events] == [
            (nr_id, "proposed", "todo", "t")
        ]
