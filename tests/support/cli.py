"""The real ``paxmr`` executable, run as a subprocess with a clean environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PAXMR = Path(sys.executable).with_name("paxmr")
CLI_TIMEOUT = 60.0

Arg = str | int | Path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that would steer paxmr or systemd, plus
    ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAXMR_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
        and k != "CREDENTIALS_DIRECTORY"
    }
    env.update(extra or {})
    return env


def paxmr(
    *args: Arg,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    env: Mapping[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (text output); ``env`` defaults to ``clean_env()``, ``prefix`` goes before
    the executable (``setpriv ...``)."""
    return subprocess.run(
        [*prefix, str(PAXMR), *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env() if env is None else dict(env),
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
    return result


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)
