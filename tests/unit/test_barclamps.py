"""Barclamp loading: the core barclamp, and bad files refused with file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance.annealer import barclamps
from appliance.annealer.barclamps import BarclampError, read_dir, validate_graph
from appliance.db import Database
from appliance.jigs import REGISTRY
from appliance.models import Barclamp, Event, Role
from tests.unit.annealer_world import write_barclamp

CORE_ROLES = {
    "kiln-discovered",
    "bmc-discover",
    "bmc-configure",
    "network-admin",
    "dns-client",
    "ntp-server",
    "ntp-client",
    "os-install",
    "ready",
}


def refused(directory: Path) -> BarclampError:
    with pytest.raises(BarclampError) as info:
        validate_graph(read_dir(directory, REGISTRY))
    return info.value


def test_core_barclamp_is_loaded_at_start_with_cohorts_in_dependency_order(db: Database) -> None:
    # create_database() loaded it (appliance.db.migrate.seed); loading it again changes nothing
    with db.session() as session:
        barclamps.load_core(session)
    with db.read_session() as session:
        roles = {r.name: r for r in session.scalars(select(Role))}
        assert set(roles) == CORE_ROLES
        for role in roles.values():
            for req in role.requires:
                assert roles[req].cohort < role.cohort, (role.name, req)
        assert roles["kiln-discovered"].cohort == 0
        assert roles["ntp-server"].cluster and roles["ready"].milestone and roles["kiln-discovered"].discovery
        assert session.scalar(select(func.count()).where(Event.action == "barclamp.load")) == 2


def test_reloading_a_barclamp_updates_roles_in_place(db: Database, tmp_path: Path) -> None:
    directory = write_barclamp(tmp_path, "roles:\n  - {name: a, jig: noop}\n")
    with db.session() as session:
        barclamps.load(session, directory)
    (directory / "barclamp.yaml").write_text(
        "barclamp: {name: testbc, version: '2'}\nroles:\n  - {name: a, jig: test, description: again}\n"
    )
    with db.session() as session:
        barclamps.load(session, directory)
    with db.read_session() as session:
        role = session.scalar(select(Role).where(Role.name == "a"))
        assert role is not None and role.jig == "test" and role.description == "again"
        assert session.scalar(select(Barclamp.version).where(Barclamp.name == "testbc")) == "2"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    directory = write_barclamp(tmp_path, "roles:\n  - name: a\n    requires: [b\n  - name: c\n")
    error = refused(directory)
    assert error.file.endswith("barclamp.yaml")
    assert error.line in (4, 5)
    assert "not valid YAML" in error.reason


def test_unknown_role_key_is_refused_at_its_line(tmp_path: Path) -> None:
    directory = write_barclamp(
        tmp_path,
        "roles: []\n",
        extra={"more.yaml": "roles:\n  - name: a\n    jig: noop\n    requieres: [b]\n"},
    )
    error = refused(directory)
    assert (Path(error.file).name, error.line) == ("more.yaml", 4)
    assert "unknown role key 'requieres'" in error.reason
    assert str(error).startswith(f"{directory / 'more.yaml'}:4: ")


def test_require_of_unknown_role_is_refused_at_its_line(tmp_path: Path) -> None:
    directory = write_barclamp(
        tmp_path,
        "roles:\n  - name: a\n  - name: b\n    requires:\n      - a\n      - nosuchrole\n",
    )
    error = refused(directory)
    assert error.line == 7
    assert "requires unknown role 'nosuchrole'" in error.reason


def test_dependency_cycle_is_refused_naming_the_cycle(tmp_path: Path) -> None:
    directory = write_barclamp(
        tmp_path,
        "roles:\n  - {name: a, requires: [c]}\n  - {name: b, requires: [a]}\n  - {name: c, requires: [b]}\n",
    )
    error = refused(directory)
    assert "dependency cycle" in error.reason
    assert all(name in error.reason for name in ("a -> ", "b", "c"))
    assert error.line in (3, 4, 5)


def test_cycle_through_a_role_already_loaded_is_refused(db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        barclamps.load(
            session, write_barclamp(tmp_path / "one", "roles:\n  - {name: x, requires: []}\n", "one")
        )
        barclamps.load(
            session, write_barclamp(tmp_path / "two", "roles:\n  - {name: y, requires: [x]}\n", "two")
        )
    bad = write_barclamp(tmp_path / "three", "roles:\n  - {name: x, requires: [y]}\n", "one")
    with pytest.raises(BarclampError, match="dependency cycle"), db.session() as session:
        barclamps.load(session, bad)


def test_unknown_jig_and_bad_default_type_are_refused(tmp_path: Path) -> None:
    error = refused(write_barclamp(tmp_path / "j", "roles:\n  - name: a\n    jig: chef\n"))
    assert (error.line, "unknown jig 'chef'" in error.reason) == (4, True)
    error = refused(
        write_barclamp(
            tmp_path / "d",
            "roles:\n  - name: a\n    inputs:\n      port:\n        schema: {type: integer}\n        default: eighty\n",
        )
    )
    assert error.line == 7 and "not of type integer" in error.reason


def test_role_defined_twice_is_refused_naming_both_places(tmp_path: Path) -> None:
    directory = write_barclamp(
        tmp_path, "roles:\n  - {name: a}\n", extra={"b.yaml": "roles:\n  - {name: a}\n"}
    )
    error = refused(directory)
    assert "already defined at" in error.reason and "barclamp.yaml:3" in error.reason


def test_refused_load_writes_nothing(db: Database, tmp_path: Path) -> None:
    directory = write_barclamp(tmp_path, "roles:\n  - {name: a}\n  - {name: b, requires: [zzz]}\n")
    with db.read_session() as session:
        roles_before = session.scalar(select(func.count()).select_from(Role))
        barclamps_before = session.scalar(select(func.count()).select_from(Barclamp))
    with pytest.raises(BarclampError), db.session() as session:
        barclamps.load(session, directory)
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Role)) == roles_before
        assert session.scalar(select(func.count()).select_from(Barclamp)) == barclamps_before


def test_provides_satisfies_a_requirement(tmp_path: Path) -> None:
    directory = write_barclamp(
        tmp_path, "roles:\n  - {name: chrony, provides: [ntp]}\n  - {name: app, requires: [ntp]}\n"
    )
    cohorts = validate_graph(read_dir(directory, REGISTRY))
    assert cohorts == {"chrony": 0, "app": 1}
