"""``paxmr shell`` fed through stdin: help, commands, errors that do not end it, exit."""

from __future__ import annotations

import json

import pytest

from tests.support.local import Node

pytestmark = pytest.mark.integration


def test_shell_session(node: Node) -> None:
    (node.data / "shell_words.txt").write_bytes(b"hi hi there\n")
    lines = [
        "help",
        "help map",
        "status",
        "frobnicate",  # unknown command: error, the shell goes on
        "map ../escape.txt",  # refused path: error, the shell goes on
        "map 'unbalanced",  # not even a command line
        "local up",  # not allowed inside
        "",
        "   ",
        "run shell_words.txt",
        "status",
        "exit",
        "status",  # never runs
        "",
    ]
    script = "\n".join(lines)
    result = node.cli("-o", "json", "shell", input=script)
    assert result.returncode == 2, result.stderr  # the last failure: 'local up' (usage)
    out, err = result.stdout, result.stderr
    assert "Usage:" in out
    assert "Commands:" in out  # the top-level help lists commands
    assert "Count FILE's words" in out  # help map
    assert out.count('"mapper-1": "up"') == 2  # status ran twice, not after exit
    assert "No such command 'frobnicate'" in err
    assert "outside the data directory" in err
    assert "No closing quotation" in err
    assert "'local' is not available inside the shell" in err
    assert "Traceback" not in err
    assert "shell_words.txt_reduced" in out
    assert (node.data / "shell_words.txt_reduced").read_bytes() == (
        b"paxmr-tally 1\nhi\t2\nthere\t1\n"
    )


def test_shell_ends_at_end_of_input(node: Node) -> None:
    result = node.cli("-o", "json", "shell", input="status")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node"] == 1


@pytest.mark.parametrize("word", ["exit", "quit"])
def test_shell_exit_words(node: Node, word: str) -> None:
    result = node.cli("shell", input=f"{word}\nstatus\n")
    assert result.returncode == 0
    assert result.stdout == ""
