"""BMC credentials at rest: Fernet round trip, key handling, and the password staying out of events."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from appliance.bmc.credentials import decrypt_password, encrypt_password, set_node_bmc, target_for_node
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import ConfigError, InvalidInput
from appliance.models import Event, Node

PASSWORD = "Sup3r-s3cret-BMC-pw"


def test_password_round_trips_and_is_not_stored_in_clear(settings: Settings) -> None:
    token = encrypt_password(settings, PASSWORD)
    assert PASSWORD.encode() not in token
    assert decrypt_password(settings, token) == PASSWORD
    # Fernet tokens carry a random IV: the same password twice gives two different tokens
    assert encrypt_password(settings, PASSWORD) != token


def test_derived_key_is_stable_for_the_same_secret_key(settings: Settings) -> None:
    token = encrypt_password(settings, PASSWORD)
    again = Settings(state_dir=settings.state_dir, secret_key=settings.secret_key)
    assert decrypt_password(again, token) == PASSWORD


def test_configured_credential_key_is_used_instead_of_the_secret_key(settings: Settings) -> None:
    key = Fernet.generate_key().decode()
    keyed = settings.model_copy(update={"credential_key": SecretStr(key)})
    token = encrypt_password(keyed, PASSWORD)
    assert Fernet(key.encode()).decrypt(token).decode() == PASSWORD
    with pytest.raises(ConfigError, match="credential key"):
        decrypt_password(settings, token)


def test_malformed_credential_key_is_a_config_error_naming_the_key(settings: Settings) -> None:
    bad = settings.model_copy(update={"credential_key": SecretStr("not-a-fernet-key")})
    with pytest.raises(ConfigError) as caught:
        encrypt_password(bad, PASSWORD)
    assert caught.value.field == "credential_key"


def _node(db: Database) -> int:
    with db.session() as session:
        node = Node(name="n1.kiln.lab")
        session.add(node)
        session.flush()
        return node.id


def test_setting_credentials_records_an_event_without_the_password(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node_id = _node(db)
    with db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        set_node_bmc(
            session, settings, node, address="10.9.0.5", username="kiln", password=PASSWORD, actor="t"
        )
    with db.read_session() as session:
        node = session.get(Node, node_id)
        assert node is not None and node.bmc_password_enc is not None
        assert PASSWORD.encode() not in node.bmc_password_enc
        events = session.scalars(select(Event).where(Event.action == "node.bmc")).all()
        assert len(events) == 1
        assert "password" in events[0].data["changed"]
        assert PASSWORD not in repr(events[0].data) + events[0].message
        target = target_for_node(node, settings)
    assert target.password == PASSWORD
    assert PASSWORD not in repr(target) and PASSWORD not in target.describe()
    assert PASSWORD not in caplog.text


def test_bad_address_changes_nothing(sqlite_db: Database, settings: Settings) -> None:
    db = sqlite_db
    node_id = _node(db)
    with pytest.raises(InvalidInput) as caught, db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        set_node_bmc(session, settings, node, address="http://", username="kiln", password=PASSWORD)
    assert caught.value.field == "bmc_address"
    with db.read_session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        assert node.bmc_address is None and node.bmc_password_enc is None
        assert session.scalars(select(Event).where(Event.action == "node.bmc")).all() == []


def test_node_without_credentials_has_no_target(sqlite_db: Database, settings: Settings) -> None:
    db = sqlite_db
    node_id = _node(db)
    with db.session() as session:
        node = session.get(Node, node_id)
        assert node is not None
        set_node_bmc(session, settings, node, address="10.9.0.5")
        with pytest.raises(InvalidInput, match="no BMC credentials"):
            target_for_node(node, settings)
