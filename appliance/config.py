"""The one settings object: /etc/kiln/kiln.toml, then KILN_* environment variables.

Read once by the entry point (CLI, WSGI factory) and passed in; never imported as a global.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from appliance.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kiln/kiln.toml")
DEFAULT_STATE_DIR = Path("/var/lib/kiln")
# Prometheus ports of the processes a systemd install runs, one per unit (a process running several
# services, such as `kiln serve`, uses metrics_port instead).
DEFAULT_METRICS_PORTS = {
    "web": 9671,
    "dhcp": 9672,
    "tftp": 9673,
    "dns": 9674,
    "annealer": 9675,
    "ra": 9676,
    "power-state": 9677,
    "webhooks": 9678,
}


class _TomlSource(PydanticBaseSettingsSource):
    """Settings from a TOML file; sections are flattened (`[dhcp] interfaces` → `dhcp_interfaces`)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        try:
            if self.path is None or not self.path.exists():
                return {}
            text = self.path.read_text()
        except OSError as exc:
            # e.g. /etc/kiln/kiln.toml kept 0640 root:kiln and read by another user
            raise ConfigError(f"{self.path}: cannot read: {exc.strerror}", field=str(self.path)) from exc
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.path}: not valid TOML: {exc}", field=str(self.path)) from exc
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    flat[f"{key}_{sub}"] = subvalue
            else:
                flat[key] = value
        return flat


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="forbid", validate_default=True)

    # where state lives; the SQLite database defaults to <state_dir>/kiln.db
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str = ""
    secret_key: SecretStr = Field(default_factory=lambda: SecretStr(""))
    # key for BMC credentials at rest (Fernet, urlsafe base64 of 32 bytes); derived from secret_key if empty
    credential_key: SecretStr = Field(default_factory=lambda: SecretStr(""))

    admin_domain: str = "kiln.lab"
    # the address nodes use to reach this appliance (boot URLs, DHCP next-server, DNS server option)
    advertise_address: str = "127.0.0.1"
    web_bind: str = "127.0.0.1:8080"
    web_port: int = 8080
    # reverse proxies in front of the web whose X-Forwarded-For/-Proto/-Host are believed (0: none, so
    # a client cannot claim another address to dodge the login throttle or fake the logs)
    web_trusted_proxies: int = 0
    # when set, GET /metrics on the web port wants `Authorization: Bearer <this>` (Prometheus:
    # `authorization: {credentials: ...}`); empty leaves it open, like the services' 127.0.0.1 listeners
    web_metrics_token: SecretStr = Field(default_factory=lambda: SecretStr(""))

    dhcp_interfaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dhcp_proxy: bool = False
    dhcp_discovery: bool = True
    dhcp_lease_seconds: int = 3600
    dhcp_uefi_loader: str = "ipxe.efi"
    dhcp_port: int = 67

    tftp_root: Path = Path("/var/lib/kiln/tftp")
    tftp_bind: str = "0.0.0.0"
    tftp_port: int = 69
    # microseconds a responder polls for the next ACK before sleeping (services/busypoll.py); 0: never
    tftp_busy_poll_us: int = 200

    dns_bind: str = "0.0.0.0"
    dns_port: int = 53
    dns_upstreams: Annotated[list[str], NoDecode] = Field(default_factory=list)
    dns_allow_recursion_from: Annotated[list[str], NoDecode] = Field(default_factory=list)

    annealer_workers: int = 8
    annealer_batch: int = 500
    annealer_lease_seconds: int = 300
    annealer_retry_limit: int = 5

    # event sinks (appliance.webhooks): POSTs at once, seconds per POST, tries before `failed`,
    # first retry delay (doubling up to the max), POSTs at once to one sink, days deliveries are kept
    webhooks_workers: int = 8
    webhooks_timeout: float = 5.0
    webhooks_max_attempts: int = 8
    webhooks_backoff_seconds: float = 5.0
    webhooks_backoff_max: float = 900.0
    webhooks_per_sink: int = 2
    webhooks_keep_days: int = 7

    metrics_enabled: bool = True
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 9670
    metrics_ports: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))

    log_level: str = "INFO"

    @field_validator("dhcp_interfaces", "dns_upstreams", "dns_allow_recursion_from", mode="before")
    @classmethod
    def _list_from_env(cls, value: Any) -> Any:
        # KILN_DHCP_INTERFACES=eth1,eth2 is what operators write; a JSON list works too.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a JSON list: {exc}") from exc
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()

    @field_validator("web_port", "dhcp_port", "tftp_port", "dns_port", "metrics_port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a port number 0-65535")
        return value

    @field_validator("tftp_busy_poll_us")
    @classmethod
    def _busy_poll(cls, value: int) -> int:
        if not 0 <= value <= 10_000:
            raise ValueError("must be 0-10000 microseconds (0: never busy-poll)")
        return value

    @field_validator("web_trusted_proxies")
    @classmethod
    def _hops(cls, value: int) -> int:
        if not 0 <= value <= 8:
            raise ValueError("must be 0-8 (the number of proxies in front of the web)")
        return value

    @field_validator("metrics_ports")
    @classmethod
    def _ports(cls, value: dict[str, int]) -> dict[str, int]:
        for name, port in value.items():
            if not 0 <= port <= 65535:
                raise ValueError(f"port of '{name}' must be 0-65535")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("KILN_CONFIG", str(DEFAULT_CONFIG_PATH)))
        return (init_settings, env_settings, _TomlSource(settings_cls, path))

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'kiln.db'}"

    def effective_secret_key(self) -> str:
        """The configured secret, or one generated once and kept in the state dir."""
        value = self.secret_key.get_secret_value()
        if value:
            return value
        path = self.state_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        path.write_text(value)
        path.chmod(0o600)
        return value


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; any problem becomes one ConfigError naming the key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "config"
        reason = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"bad configuration for '{key}': {reason}", field=key) from exc
    except SettingsError as exc:
        # raised by pydantic-settings when an environment value cannot be decoded at all
        text = str(exc)
        key = text.split('"')[1] if text.count('"') >= 2 else "config"
        raise ConfigError(f"bad configuration for '{key}': {text}", field=key) from exc
