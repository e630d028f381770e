"""A real local cluster (``paxmr local up``) shared by the integration tier, and helpers to drive it.

Everything goes through the real ``paxmr`` executable and the services' real Unix sockets.
The cluster directory is world-traversable so a test can run the CLI as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from paxmr import settings as settings_mod
from paxmr.settings import Settings

PAXMR = Path(sys.executable).with_name("paxmr")
CLI_TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would steer paxmr or systemd."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAXMR_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
        and k != "CREDENTIALS_DIRECTORY"
    }
    env.update(extra)
    return env


def paxmr(
    *args: str | Path,
    input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; text output."""
    return subprocess.run(
        [*prefix, str(PAXMR), *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env or clean_env(),
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
    return result


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


@dataclass(frozen=True)
class Node:
    id: int
    config: Path

    @property
    def settings(self) -> Settings:
        return settings_mod.load(self.config)

    @property
    def data(self) -> Path:
        return self.settings.data_dir

    @property
    def run_dir(self) -> Path:
        return self.settings.runtime_dir

    def cli(self, *args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return paxmr("-c", self.config, *args, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Cluster:
    root: Path
    nodes: list[Node]


def start_cluster(root: Path, nodes: int, mappers: int = 2) -> Cluster:
    up = paxmr("-o", "json", "local", "up", "--nodes", nodes, "--mappers", mappers, "--dir", root)
    assert up.returncode == 0, up.stderr
    configs = json.loads(up.stdout)["configs"]
    return Cluster(root, [Node(i, Path(c)) for i, c in enumerate(configs, start=1)])


def stop_cluster(root: Path) -> subprocess.CompletedProcess[str]:
    return paxmr("local", "down", "--dir", root)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-it-"))
    root.chmod(0o755)
    try:
        c = start_cluster(root, nodes=2)
        yield c
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node(cluster: Cluster) -> Node:
    return cluster.nodes[0]
