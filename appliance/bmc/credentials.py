"""BMC passwords at rest: Fernet tokens in nodes.bmc_password_enc, decrypted only to open a session.

The key is `settings.credential_key` (a Fernet key) or, when that is empty, one derived with HKDF from
the appliance's secret key. Neither the key nor a clear password is ever logged, put in an Event or
returned by the API: the only way out of this module is `BMCTarget.password`, which repr() hides.
"""

from __future__ import annotations

import base64
import logging

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from appliance import events
from appliance.bmc.base import BMCTarget
from appliance.config import Settings
from appliance.errors import ConfigError, InvalidInput
from appliance.models import Node

log = logging.getLogger(__name__)

_HKDF_INFO = b"kiln bmc credentials v1"


def _fernet(settings: Settings) -> Fernet:
    configured = settings.credential_key.get_secret_value()
    if configured:
        try:
            return Fernet(configured.encode())
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "bad configuration for 'credential_key': must be a Fernet key "
                "(urlsafe base64 of 32 bytes; `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)",
                field="credential_key",
            ) from exc
    secret = settings.effective_secret_key().encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_password(settings: Settings, password: str) -> bytes:
    return _fernet(settings).encrypt(password.encode())


def decrypt_password(settings: Settings, token: bytes) -> str:
    try:
        return _fernet(settings).decrypt(token).decode()
    except InvalidToken:
        raise ConfigError(
            "a stored BMC password cannot be decrypted: the credential key (credential_key or "
            "secret_key) changed since it was stored; set the BMC credentials again",
            field="credential_key",
        ) from None


def set_node_bmc(
    session: Session,
    settings: Settings,
    node: Node,
    *,
    address: str | None = None,
    username: str | None = None,
    password: str | None = None,
    driver: str | None = None,
    actor: str = "system",
) -> None:
    """Set a node's BMC address/driver/credentials; unset arguments keep their value.

    The address is parsed first so a bad one changes nothing; the Event names what changed,
    never the password itself.
    """
    if driver is not None and driver not in ("ipmi", "redfish", ""):
        raise InvalidInput("bmc_driver", f"'{driver}' is not one of ipmi, redfish")
    if address is not None and address != "":
        BMCTarget.parse(address, username or "", "", driver=driver or None)
    if username is not None and len(username) > 64:
        raise InvalidInput("bmc_username", "is longer than 64 characters")
    changed: list[str] = []
    if address is not None:
        node.bmc_address = address or None
        changed.append("address")
    if driver is not None:
        node.bmc_driver = driver or None
        changed.append("driver")
    if username is not None:
        node.bmc_username = username or None
        changed.append("username")
    if password is not None:
        node.bmc_password_enc = encrypt_password(settings, password) if password else None
        changed.append("password")
    if not changed:
        return
    node.version += 1
    events.record(
        session,
        "node.bmc",
        subject_type="node",
        subject_id=node.id,
        actor=actor,
        message=f"BMC {', '.join(changed)} of {node.name} set",
        data={"changed": changed, "bmc_address": node.bmc_address, "bmc_driver": node.bmc_driver},
    )


def target_for_node(node: Node, settings: Settings, *, timeout: float = 10.0) -> BMCTarget:
    """The BMCTarget of a node, with its password decrypted; InvalidInput when something is missing."""
    if not node.bmc_address:
        raise InvalidInput("bmc_address", f"node {node.name} has no BMC address")
    if not node.bmc_username or node.bmc_password_enc is None:
        raise InvalidInput("bmc_username", f"node {node.name} has no BMC credentials")
    password = decrypt_password(settings, node.bmc_password_enc)
    return BMCTarget.parse(
        node.bmc_address, node.bmc_username, password, driver=node.bmc_driver, timeout=timeout
    )
