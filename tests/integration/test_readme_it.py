"""The README's quick start for a local cluster, run as written (issue 13: it must work when
pasted into a fresh shell). Two things differ: `make venv` is not run (the tests run in the
venv it makes) and the corpus is 1 MiB instead of 64, in a temporary directory instead of
/tmp/c."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import PAXMR, clean_env, paxmr

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def quick_start() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Without systemd: a local cluster (quick start)") :]
    section = section[: section.index("\n\n", section.index("    make venv"))]
    return [line[4:] for line in section.splitlines() if line.startswith("    ")]


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    make, *lines = quick_start()
    assert make.startswith("make venv")
    script = "\n".join(lines)
    where = str(tmp_path / "c")
    assert script.count("/tmp/c") >= 5
    assert script.count("--size 64MiB") == 1
    script = script.replace("/tmp/c", where).replace("--size 64MiB", "--size 1MiB")
    # A fresh shell: no profile, no rc file, PATH without paxmr until the quick start's export
    # (the venv running this test comes first in case the checkout's .venv is another one).
    path = f"{PAXMR.parent}:/usr/local/bin:/usr/bin:/bin"
    env = clean_env({"PATH": path, "HOME": str(tmp_path)})
    try:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-c", script],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        paxmr("local", "down", "--dir", where)
    assert done.returncode == 0, done.stderr
    assert "-> log position 0" in done.stdout
    assert "services: 12 of 12 answering" in done.stdout
    assert "  0  text.txt_reduced  " in done.stdout  # print --consistent on another node
