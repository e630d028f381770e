"""The one settings class: a TOML file plus ``PAXMR_*`` environment variables."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("/etc/paxmr/paxmr.toml")
# The peer TLS files: in ``tls_dir`` or systemd's credentials directory (LoadCredential=).
TLS_FILES = ("peer-ca", "peer-cert", "peer-key")

# Room in a frame beyond the value bytes of a batch: msgpack framing of its entries (about 20
# bytes each, at most limits.in_flight of them), ballots and the frame header.
_FRAME_SLACK = 32 * 1024

NodeId = Annotated[int, Field(ge=1, le=255)]
Port = Annotated[int, Field(ge=1, le=65535)]


class NodeAddress(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: NodeId
    host: str = Field(min_length=1)
    port: Port


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    control_line_bytes: int = Field(default=1 << 20, ge=1024)
    # Per service; kept well under the units' LimitNOFILE. Past it the longest-idle is dropped.
    control_connections: int = Field(default=256, ge=2)
    control_idle_seconds: float = Field(default=60.0, gt=0)
    value_bytes: int = Field(default=8 << 20, ge=1024)
    # The largest tally file replicate reads; a log object over value_bytes spans several log
    # values (paxmr/chunks.py). The PRM holds about three copies of it while it replicates.
    tally_bytes: int = Field(default=256 << 20, ge=1024)
    frame_bytes: int = Field(default=32 << 20, ge=4096)
    in_flight: int = Field(default=1024, ge=1)
    # The PRM's worker processes for heavy client work (merge, parsing a tally to replicate),
    # and how many such requests may run or wait at once before more are refused as busy.
    heavy_workers: int = Field(default=2, ge=1, le=64)
    heavy_requests: int = Field(default=8, ge=1)
    # Value bytes this node's clients may have submitted and awaiting an outcome; past it (and
    # with at least one request in flight) a replicate is refused as busy before it is submitted.
    in_flight_bytes: int = Field(default=16 << 20, ge=1)
    # The log's quota (none: unlimited): value bytes and entries of the applied log. A replicate
    # that would exceed it is refused with "quota" before it is submitted.
    log_bytes: int | None = Field(default=None, ge=1)
    log_entries: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _value_fits_frame(self) -> Self:
        if self.frame_bytes < self.value_bytes + _FRAME_SLACK:
            raise ValueError("frame_bytes must be at least value_bytes + 32 KiB")
        return self

    @property
    def batch_bytes(self) -> int:
        """Value bytes per accept or catch-up batch, so that a batch fits in one frame."""
        return self.frame_bytes - _FRAME_SLACK


class Timing(BaseModel):
    """Protocol timers, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat: float = Field(default=0.1, gt=0)
    election_min: float = Field(default=0.5, gt=0)
    election_max: float = Field(default=1.0, gt=0)
    replicate_timeout: float = Field(default=5.0, gt=0)
    # Chunks that no manifest committed (an upload abandoned halfway) are emptied by the log's
    # reclaim entries, which the leader proposes at most this often (paxmr/chunks.py): such a
    # chunk goes after one to two of these periods.
    chunk_reclaim: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.heartbeat < self.election_min <= self.election_max:
            raise ValueError("need heartbeat < election_min <= election_max")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PAXMR_", env_nested_delimiter="__", extra="forbid"
    )

    node_id: NodeId = 1
    nodes: list[NodeAddress] = Field(default_factory=list)
    data_dir: Path = Path("/var/lib/paxmr/data")
    state_dir: Path = Path("/var/lib/paxmr/state")
    runtime_dir: Path = Path("/run/paxmr")
    mappers: int = Field(default=2, ge=1, le=64)
    peer_bind: str | None = None
    tls_dir: Path | None = None
    # The PRM's Prometheus endpoint (http://HOST:PORT/metrics); none without a port.
    metrics_host: str = "127.0.0.1"
    metrics_port: Port | None = None
    limits: Limits = Field(default_factory=Limits)
    timing: Timing = Field(default_factory=Timing)

    @model_validator(mode="after")
    def _membership(self) -> Self:
        ids = [n.id for n in self.nodes]
        if len(ids) == 1:
            raise ValueError("[[nodes]] needs at least 2 members (3 to survive a failure)")
        if len(set(ids)) != len(ids):
            raise ValueError("node ids in [[nodes]] must be unique")
        if self.nodes and self.node_id not in ids:
            raise ValueError(f"node_id {self.node_id} is not one of [[nodes]] ids {sorted(ids)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - key via LoadCredential
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then PAXMR_* variables, then the TOML file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    # --- derived paths -------------------------------------------------------------------------

    def mapper_socket(self, mapper_id: int) -> Path:
        return self.runtime_dir / f"mapper-{mapper_id}.sock"

    @property
    def reducer_socket(self) -> Path:
        return self.runtime_dir / "reducer.sock"

    @property
    def prm_socket(self) -> Path:
        return self.runtime_dir / "prm.sock"

    @property
    def me(self) -> NodeAddress:
        for node in self.nodes:
            if node.id == self.node_id:
                return node
        raise ConfigError(f"node {self.node_id} has no entry in [[nodes]]")

    def tls_files(self) -> TlsFiles:
        """The CA bundle, certificate and key: ``tls_dir``, else systemd's credentials directory.

        A key in ``tls_dir`` must not be readable by group or others (a ConfigError says so).
        The credentials directory is private to the service whatever its files' modes (systemd
        may make them 0440 for the service's group), so its files are not checked."""
        directory = self.tls_dir
        private = directory is None
        if directory is None:
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if not creds:
                raise ConfigError(
                    "no peer TLS files: set tls_dir or run under systemd with LoadCredential="
                    + ",".join(TLS_FILES)
                )
            directory = Path(creds)
        ca, cert, key = (directory / name for name in TLS_FILES)
        for path in (ca, cert, key):
            if not path.is_file():
                raise ConfigError(f"peer TLS file {path} is missing")
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077 and not private:
            raise ConfigError(
                f"peer TLS key {key} has mode {mode:04o}: it must not be readable by group or"
                f" others (chmod 600 {key})"
            )
        return TlsFiles(ca, cert, key)


class TlsFiles(NamedTuple):
    ca: Path
    cert: Path
    key: Path


class ConfigError(Exception):
    """A configuration problem, reported to the operator as one clear line."""


def config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("PAXMR_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load(explicit: Path | None = None, **overrides: Any) -> Settings:
    """Read settings; a missing default file means built-in defaults, a bad one a ConfigError."""
    path = config_path(explicit)
    exists = path.is_file()
    if not exists and (explicit is not None or os.environ.get("PAXMR_CONFIG")):
        raise ConfigError(f"{path}: config file not found")

    class FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path if exists else None)

    try:
        return FromFile(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
