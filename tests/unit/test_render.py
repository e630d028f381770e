"""Text rendering: tables that long names do not break, thousands separators, the man page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

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


def test_tables_and_merge_bars_line_up_with_wide_characters() -> None:
    """A terminal shows an East Asian wide character in two columns and a combining accent in
    none: columns are padded by what is shown, not by code points."""
    names = ["日本語のファイル名.txt_reduced", "cafe\u0301.txt_reduced", "plain.txt_reduced"]
    entries = [
        {"position": i, "file": name, "node": 1, "words": 1000 * (i + 1), "distinct": 7}
        for i, name in enumerate(names)
    ]
    header, *rows = render.log({"entries": entries, "digest": "ab"}).splitlines()[:4]
    ends = {render.width(row[: row.index(f"{i + 1},000") + 5]) for i, row in enumerate(rows)}
    assert ends == {render.width(header[: header.index("words") + 5])}, rows
    merged = render.merged(
        {"positions": [0], "total": 5, "distinct": 3,
         "words": [["日本語の", 3], ["e\u0301", 1], ["plain", 1]]}
    )  # fmt: skip
    bars = [render.width(line[: line.index("#")]) for line in merged.splitlines()[1:]]
    assert len(set(bars)) == 1, merged


def test_cluster_table_names_the_members_that_did_not_answer() -> None:
    view = {"role": "leader", "leader": 1, "ballot": [7, 1], "stopped": False, "voting": True,
            "slots": 12345, "entries": 12000, "digest": "cd" * 32, "problems": [],
            "version": "0.1.0", "log_bytes": 9876543, "uptime_s": 3.0}  # fmt: skip
    members = [
        {"node": 1, "address": "[2001:db8::1]:7000", "role": "voter", "heard_s_ago": 0.0,
         "behind": 0, "replica": view},
        {"node": 2, "address": "10.77.0.12:7000", "role": "learner", "heard_s_ago": None,
         "behind": None, "replica": None, "error": "no answer within 3 s"},
    ]  # fmt: skip
    text = render.cluster_status({"members": members, "epoch": 2, "quorum": 1, "asked_by": 1})
    header, first, second, summary, silent = text.splitlines()
    assert "12,345" in first
    assert "9,876,543" in first
    assert "cdcdcdcdcdcd" in first
    assert "NO ANSWER" in second
    assert "no answer within 3 s" in second
    assert header.index("health") == first.index("ok") == second.index("no answer")
    assert summary == "asked node 1; epoch 2, quorum 1"
    assert silent == "did not answer: node 2"


def test_man_page_lists_every_command_and_the_exit_codes() -> None:
    ctx = click.Context(cli, info_name="paxmr")
    page = render.man(cli, ctx)
    assert page.startswith(".TH PAXMR 1")
    assert "\\fBsim\\fR" in page  # a command imported only when asked for (cli._Commands)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            for sub in command.commands:
                assert f"\\fB{render.roff(f'{name} {sub}')}\\fR" in page, (name, sub)
        else:
            assert f"\\fB{render.roff(name)}\\fR" in page, name
    assert "\\-\\-consistent" in page
    assert "130 interrupted" in page


def test_paxmr_man_prints_a_page_man_renders() -> None:
    done = subprocess.run([str(PAXMR), "man"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(".TH PAXMR 1")
    if shutil.which("man") is None:
        pytest.skip("no man(1) here to render the page with")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAN")} | {"MANWIDTH": "100"}
    shown = subprocess.run(["man", "-l", "-"], input=done.stdout, capture_output=True,
                           text=True, env=env, check=False)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "status [OPTIONS]" in shown.stdout
    assert "--consistent" in shown.stdout


def test_shell_completion_script_is_generated() -> None:
    env = {**os.environ, "_PAXMR_COMPLETE": "bash_source"}
    done = subprocess.run([str(PAXMR)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "complete -o nosort -F _paxmr_completion paxmr" in done.stdout
