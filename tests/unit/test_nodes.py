from __future__ import annotations

import pytest
from sqlalchemy import select

from appliance import nodes
from appliance.db import Database
from appliance.errors import Conflict, InvalidInput
from appliance.models import Event, NodeMac


@pytest.mark.parametrize(
    "spelling",
    ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "5254.00ab.cdef", "525400ABCDEF", " 52:54:00:ab:cd:ef "],
)
def test_mac_spellings_normalise_to_one_form(spelling: str) -> None:
    assert nodes.normalize_mac(spelling) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("bad", ["", "52:54:00:ab:cd", "52:54:00:ab:cd:eg", "52:54:00:ab:cd:ef:01"])
def test_bad_macs_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        nodes.normalize_mac(bad, "macs[2]")
    assert err.value.field == "macs[2]"


@pytest.mark.parametrize("name", ["n1", "rack-1.row-2", "a" * 63, "0node"])
def test_dns_safe_names_pass(name: str) -> None:
    assert nodes.check_node_name(name) == name


@pytest.mark.parametrize("name", ["", "N1", "n_1", "-n1", "n1-", "a" * 64, "a..b", "n1.", "ñ"])
def test_names_that_are_not_dns_safe_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        nodes.check_node_name(name)


def test_match_by_uuid_first_then_any_mac_ignoring_placeholder_uuids(db: Database) -> None:
    with db.session() as s:
        a = nodes.create_node(
            s, "a", macs=["52:54:00:00:00:0a"], system_uuid="4C4C4544-0000-1111-2222-333344445555"
        )
        b = nodes.create_node(s, "b", macs=["52:54:00:00:00:0b", "52:54:00:00:00:0c"])
        ids = (a.id, b.id)
    with db.read_session() as s:
        by_uuid = nodes.match_node(
            s, macs=["52:54:00:00:00:0b"], system_uuid="4c4c4544-0000-1111-2222-333344445555"
        )
        assert by_uuid is not None and by_uuid.id == ids[0]
        by_second_mac = nodes.match_node(s, macs=["52-54-00-00-00-99", "52-54-00-00-00-0C"])
        assert by_second_mac is not None and by_second_mac.id == ids[1]
        placeholder = nodes.match_node(
            s, macs=["52:54:00:00:00:0b"], system_uuid="03000200-0400-0500-0006-000700080009"
        )
        assert placeholder is not None and placeholder.id == ids[1]
        assert nodes.match_node(s, macs=["52:54:00:00:00:99"]) is None


def test_create_update_delete_write_events_and_keep_macs_unique(db: Database) -> None:
    with db.session() as s:
        node = nodes.create_node(s, "n1", macs=["52:54:00:00:00:01"], actor="alice")
        node_id = node.id
    with pytest.raises(Conflict), db.session() as s:
        nodes.create_node(s, "n2", macs=["52:54:00:00:00:01"])
    with pytest.raises(InvalidInput), db.session() as s:
        nodes.create_node(s, "n2", macs=["52:54:00:00:00:02", "52-54-00-00-00-02"])
    with db.session() as s:
        nodes.update_node(
            s, node_id, {"macs": ["52:54:00:00:00:03"], "state": "ready"}, expected_version=1, actor="bob"
        )
    with pytest.raises(Conflict), db.session() as s:
        nodes.update_node(s, node_id, {"state": "off"}, expected_version=1)
    with db.session() as s:
        assert s.scalars(select(NodeMac.mac)).all() == ["52:54:00:00:00:03"]
        nodes.delete_node(s, node_id, actor="carol")
    with db.read_session() as s:
        assert s.scalars(select(NodeMac)).all() == []
        rows = [
            (e.action, e.actor)
            for e in s.scalars(select(Event).where(Event.subject_type == "node").order_by(Event.id))
        ]
    assert rows == [("node.create", "alice"), ("node.update", "bob"), ("node.delete", "carol")]
