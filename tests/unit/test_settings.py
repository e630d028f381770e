"""Settings: TOML file plus PAXMR_* variables; bad input is one clear line naming file and field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from paxmr import pki
from paxmr import settings as settings_mod
from paxmr.settings import ConfigError, Settings, load

GOOD = """
node_id = 2
mappers = 3
data_dir = "/srv/data"
runtime_dir = "/srv/run"

[limits]
control_line_bytes = 4096

[[nodes]]
id = 1
host = "10.0.0.1"
port = 7001

[[nodes]]
id = 2
host = "10.0.0.2"
port = 7001
"""


@pytest.fixture(autouse=True)
def without_paxmr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PAXMR_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "paxmr.toml"
    path.write_text(text)
    return path


def test_toml_file(tmp_path: Path) -> None:
    s = load(config(tmp_path, GOOD))
    assert s.node_id == 2
    assert s.mappers == 3
    assert s.data_dir == Path("/srv/data")
    assert s.limits.control_line_bytes == 4096
    assert [n.id for n in s.nodes] == [1, 2]
    assert s.me.host == "10.0.0.2"
    assert s.mapper_socket(3) == Path("/srv/run/mapper-3.sock")
    assert s.reducer_socket == Path("/srv/run/reducer.sock")


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAXMR_MAPPERS", "5")
    monkeypatch.setenv("PAXMR_DATA_DIR", "/elsewhere")
    monkeypatch.setenv("PAXMR_LIMITS__CONTROL_LINE_BYTES", "8192")
    s = load(config(tmp_path, GOOD))
    assert s.mappers == 5
    assert s.data_dir == Path("/elsewhere")
    assert s.limits.control_line_bytes == 8192
    assert s.node_id == 2  # the rest still from the file


def test_explicit_overrides_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAXMR_MAPPERS", "5")
    assert load(config(tmp_path, GOOD), mappers=7).mappers == 7


def test_config_from_paxmr_config_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAXMR_CONFIG", str(config(tmp_path, GOOD)))
    assert load().node_id == 2


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_mod, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    s = load()
    assert s.mappers == 2
    assert s.nodes == []


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=rf"^{path}: config file not found"):
        load(path)


def test_missing_file_named_by_variable_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAXMR_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('mappers = "many"', "mappers"),
        ("mappers = 0", "mappers"),
        ("node_id = 0", "node_id"),
        ("[limits]\ncontrol_line_bytes = 10", "limits.control_line_bytes"),
        ('[[nodes]]\nid = 1\nhost = ""\nport = 1', "nodes.0.host"),
        ('[[nodes]]\nid = 1\nhost = "h"\nport = 70000', "nodes.0.port"),
        ("[timing]\nheartbeat = 1.0", "timing"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert field in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mapers = 3", "mapers"),
        ("[limits]\nline_bytes = 4096", "limits.line_bytes"),
        ('[[nodes]]\nid = 1\nhost = "h"\nport = 1\nweight = 2', "nodes.0.weight"),
    ],
)
def test_unknown_keys_refused(tmp_path: Path, text: str, key: str) -> None:
    path = config(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{path}: .*{key}: Extra inputs are not permitted"):
        load(path)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, "mappers = = 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid TOML"):
        load(path)


def test_duplicate_node_ids(tmp_path: Path) -> None:
    text = "node_id = 1\n" + '[[nodes]]\nid = 1\nhost = "a"\nport = 1\n' * 2
    with pytest.raises(ConfigError, match="unique"):
        load(config(tmp_path, text))


def test_node_id_not_in_nodes(tmp_path: Path) -> None:
    member = '[[nodes]]\nid = {}\nhost = "a"\nport = 1\n'
    text = "node_id = 3\n" + member.format(1) + member.format(2)
    with pytest.raises(ConfigError, match=r"node_id 3 is not one of \[\[nodes\]\] ids \[1, 2\]"):
        load(config(tmp_path, text))


def test_a_single_member_is_refused(tmp_path: Path) -> None:
    text = 'node_id = 1\n[[nodes]]\nid = 1\nhost = "a"\nport = 1\n'
    with pytest.raises(ConfigError, match="at least 2 members"):
        load(config(tmp_path, text))


def test_bad_env_value_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAXMR_MAPPERS", "lots")
    with pytest.raises(ConfigError, match="mappers"):
        load(config(tmp_path, GOOD))


def test_tls_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = tmp_path / "tls"
    pki.issue(tmp_path / "ca", 1, tls)
    files = Settings(tls_dir=tls).tls_files()
    assert (files.ca.name, files.cert.name, files.key.name) == ("peer-ca", "peer-cert", "peer-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tls))
    assert Settings().tls_files() == files
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="no peer TLS files"):
        Settings().tls_files()
    files.key.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644: it must not be readable"):
        Settings(tls_dir=tls).tls_files()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tls))  # private to the service by design
    assert Settings().tls_files() == files
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    files.cert.unlink()
    with pytest.raises(ConfigError, match="peer-cert is missing"):
        Settings(tls_dir=tls).tls_files()
