"""Settings: /etc/kiln/kiln.toml (sections flattened) then KILN_* variables; bad input names its key."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.config import DEFAULT_METRICS_PORTS, Settings, load_settings
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "systemd" / "kiln.toml"
KILN = str(Path(sys.executable).parent / "kiln")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KILN_* variable from the caller's shell; KILN_CONFIG points at a file the test writes."""
    for name in list(os.environ):
        if name.startswith("KILN_"):
            monkeypatch.delenv(name)
    path = tmp_path / "kiln.toml"
    monkeypatch.setenv("KILN_CONFIG", str(path))
    return path


def test_toml_sections_are_flattened_into_settings(clean_env: Path) -> None:
    clean_env.write_text(
        """
        state_dir = "/srv/kiln"
        admin_domain = "rack7.example.net"
        [dhcp]
        interfaces = ["eth1", "eth2"]
        lease_seconds = 600
        [dns]
        upstreams = ["192.0.2.53"]
        [metrics]
        ports = { dhcp = 19672 }
        [log]
        level = "debug"
        """.replace("\n        ", "\n")
    )
    settings = load_settings()
    assert settings.state_dir == Path("/srv/kiln")
    assert settings.admin_domain == "rack7.example.net"
    assert settings.dhcp_interfaces == ["eth1", "eth2"]
    assert settings.dhcp_lease_seconds == 600
    assert settings.dns_upstreams == ["192.0.2.53"]
    assert settings.metrics_ports == {"dhcp": 19672}
    assert settings.log_level == "DEBUG"
    assert settings.effective_database_url == "sqlite:////srv/kiln/kiln.db"


def test_environment_wins_over_the_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env.write_text('admin_domain = "from.file"\n[dhcp]\ninterfaces = ["eth1"]\nport = 67\n')
    monkeypatch.setenv("KILN_ADMIN_DOMAIN", "from.env")
    monkeypatch.setenv("KILN_DHCP_INTERFACES", "eth3, eth4")
    monkeypatch.setenv("KILN_DATABASE_URL", "postgresql+psycopg://kiln@db/kiln")
    settings = load_settings()
    assert settings.admin_domain == "from.env"
    assert settings.dhcp_interfaces == ["eth3", "eth4"]
    assert settings.dhcp_port == 67
    assert settings.effective_database_url == "postgresql+psycopg://kiln@db/kiln"


def test_list_variables_accept_json_as_well_as_commas(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_DNS_ALLOW_RECURSION_FROM", '["10.0.0.0/8", "192.168.0.0/16"]')
    assert load_settings().dns_allow_recursion_from == ["10.0.0.0/8", "192.168.0.0/16"]


def test_defaults_without_any_file_serve_no_dhcp_and_keep_state_in_var_lib(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.dhcp_interfaces == []
    assert settings.state_dir == Path("/var/lib/kiln")
    assert settings.metrics_ports == DEFAULT_METRICS_PORTS


def test_the_example_config_is_valid_and_sets_every_key_it_shows(clean_env: Path) -> None:
    clean_env.write_text(EXAMPLE.read_text())
    settings = load_settings()
    assert settings.dhcp_interfaces == ["eth1"]
    assert settings.admin_domain == "rack1.example.net"
    assert settings.web_port == 80
    assert settings.metrics_ports == DEFAULT_METRICS_PORTS
    raw = tomllib.loads(EXAMPLE.read_text())
    documented = set()
    for key, value in raw.items():
        if isinstance(value, dict):
            documented.update(f"{key}_{sub}" for sub in value)
        else:
            documented.add(key)
    missing = set(Settings.model_fields) - documented
    assert not missing, f"systemd/kiln.toml does not show {sorted(missing)}"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[dns]\nport = 70000\n", {}, "dns_port"),
        ("[dhcp]\ninterfacez = ['eth1']\n", {}, "dhcp_interfacez"),
        ("", {"KILN_TFTP_PORT": "tftp"}, "tftp_port"),
        ("", {"KILN_LOG_LEVEL": "chatty"}, "log_level"),
        ("", {"KILN_METRICS_PORTS": "not json"}, "metrics_ports"),
        ("", {"KILN_DHCP_INTERFACES": '["eth1"'}, "dhcp_interfaces"),
        ("[annealer]\nworkers = 'many'\n", {}, "annealer_workers"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_key(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], key: str
) -> None:
    clean_env.write_text(toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.field == key
    assert f"'{key}'" in info.value.message


def test_an_unknown_key_in_the_file_is_called_unknown(clean_env: Path) -> None:
    clean_env.write_text("[dhcp]\ninterfacez = ['eth1']\n")
    with pytest.raises(ConfigError, match="'dhcp_interfacez': unknown setting"):
        load_settings()


def test_a_file_that_is_not_toml_is_named_in_the_error(clean_env: Path) -> None:
    clean_env.write_text("[dhcp\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings()
    assert str(clean_env) in info.value.message


def test_the_secret_key_never_appears_in_the_settings_repr(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_SECRET_KEY", "hunter2-very-secret")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    assert settings.effective_secret_key() == "hunter2-very-secret"


def test_a_generated_secret_key_is_kept_private_and_stable(clean_env: Path, tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "state")
    first = settings.effective_secret_key()
    assert first == load_settings(state_dir=tmp_path / "state").effective_secret_key()
    assert (tmp_path / "state" / "secret_key").stat().st_mode & 0o077 == 0


def test_an_unreadable_config_file_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text('admin_domain = "secret.lab"\n')
    config.chmod(0o600)
    # root reads anything: run as nobody, as a user outside the kiln group would
    argv = [KILN, "db", "revision"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    result = subprocess.run(
        argv,
        env={**os.environ, "KILN_CONFIG": str(config), "KILN_STATE_DIR": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"kiln: {config}: cannot read: Permission denied"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[web]\nport = -1\n", {}, "web_port"),
        ("not toml at all [", {}, "kiln.toml"),
        ("", {"KILN_DHCP_LEASE_SECONDS": "an hour"}, "dhcp_lease_seconds"),
    ],
)
def test_the_cli_refuses_bad_configuration_with_exit_code_2_and_one_line(
    clean_env: Path, tmp_path: Path, toml: str, env: dict[str, str], key: str
) -> None:
    clean_env.write_text(toml)
    # in-process: the real binary's exit code is covered by the unreadable-file test above
    result = CliRunner().invoke(
        main, ["db", "revision"], env={**env, "KILN_STATE_DIR": str(tmp_path / "state")}
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kiln: ")
    assert key in lines[0]
