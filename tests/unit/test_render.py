"""Text rendering: tables that long names do not break, thousands separators, the man page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from paxmr import render
from paxmr.cli import cli

PAXMR = Path(sys.executable).with_name("paxmr")


def test_log_table_fits_long_names_and_separates_thousands() -> None:
    long = "a-very-long-file-name-of-sixty-characters-for-the-table.txt_"
    entries = [
        {"position": 0, "file": "short", "node": 1, "words": 1234567, "distinct": 12},
        {"position": 1, "file": long, "node": 12, "words": 5, "distinct": 1000},
    ]
    text = render.log({"entries": entries, "digest": "ab" * 32})
    header, first, second, digest = text.splitlines()
    assert "1,234,567" in first
    assert "1,000" in second
    assert long in second
    # Every column lines up: the words column ends at the same offset on every row.
    ends = {line.index(w) + len(w) for line, w in ((first, "1,234,567"), (second, " 5"))}
    assert len(ends) == 1
    assert header.index("words") + len("words") == ends.pop()
    assert digest.startswith("log digest ")


def test_man_page_lists_every_command_and_the_exit_codes() -> None:
    page = render.man(cli, click.Context(cli, info_name="paxmr"))
    assert page.startswith(".TH PAXMR 1")
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            for sub in command.commands:
                assert f"\\fB{render.roff(f'{name} {sub}')}\\fR" in page, (name, sub)
        else:
            assert f"\\fB{render.roff(name)}\\fR" in page, name
    assert "\\-\\-consistent" in page
    assert "130 interrupted" in page


def test_shell_completion_script_is_generated() -> None:
    env = {**os.environ, "_PAXMR_COMPLETE": "bash_source"}
    done = subprocess.run([str(PAXMR)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "complete -o nosort -F _paxmr_completion paxmr" in done.stdout
