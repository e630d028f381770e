"""map, reduce and run through the real CLI and the real services of a local cluster."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paxmr import control
from paxmr.wordcount import corpus as corpus_mod
from paxmr.wordcount import tally
from tests.support.cli import PAXMR, clean_env, ok, ok_json, paxmr
from tests.support.local import Cluster, Node

pytestmark = pytest.mark.integration

TEXT = (
    "the quick brown fox\tjumps over the lazy dog\n"
    "Straße café 日本語 🙂 the\r\n"
    "\x0bvertical\x0cform feed  double  spaces\n"
).encode() + b"broken \xff\xfe utf8 \xc3 the\n"


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def no_temp_files(directory: Path) -> None:
    assert [p.name for p in directory.rglob("*") if ".tmp" in p.name] == []


def test_run_equals_counter(node: Node) -> None:
    name = unique("run.txt")
    (node.data / name).write_bytes(TEXT * 50)
    result = node.cli("run", name)
    assert result.returncode == 0, result.stderr
    assert f"{name}_reduced" in result.stdout
    assert tally.read(node.data / f"{name}_reduced") == Counter((TEXT * 50).split())
    no_temp_files(node.data)


def test_map_then_reduce_with_underscores(node: Node) -> None:
    name = unique("my_big_file_I_2.txt")  # an underscore-laden name that even looks like F_I_N
    (node.data / name).write_bytes(TEXT * 7)
    mapped = node.cli("-o", "json", "map", name)
    assert mapped.returncode == 0, mapped.stderr
    outputs = json.loads(mapped.stdout)["outputs"]
    assert outputs == [f"{name}_I_1", f"{name}_I_2"]
    per_mapper = [tally.read(node.data / o) for o in outputs]
    assert sum(map(Counter, per_mapper), Counter()) == Counter((TEXT * 7).split())

    reduced = node.cli("-o", "json", "reduce", *outputs)
    assert reduced.returncode == 0, reduced.stderr
    body = json.loads(reduced.stdout)
    assert body["output"] == f"{name}_reduced"
    assert body["distinct"] == len(set((TEXT * 7).split()))
    assert tally.read(node.data / f"{name}_reduced") == Counter((TEXT * 7).split())


def test_text_output(node: Node) -> None:
    name = unique("plain")
    (node.data / name).write_bytes(b"a b c a\n")
    mapped = node.cli("map", name)
    assert mapped.returncode == 0, mapped.stderr
    assert mapped.stdout.startswith("mapped 8 bytes in ")
    reduced = node.cli("reduce", f"{name}_I_1", f"{name}_I_2")
    assert reduced.stdout.strip() == f"reduced -> {name}_reduced (3 distinct words)"


def test_json_outputs_parse(cluster: Cluster, node: Node) -> None:
    name = unique("json")
    (node.data / name).write_bytes(b"x y z\n")
    run = ok_json(node.cli("-o", "json", "run", name))
    assert run["file"] == name
    assert run["map"]["bytes"] == 6
    assert run["reduce"] == {"output": f"{name}_reduced", "distinct": 3}
    status = ok_json(node.cli("-o", "json", "status"))
    assert status["node"] == 1
    for service in ("mapper-1", "mapper-2", "reducer"):
        assert status["services"][service] == "up"
    rows = ok_json(paxmr("-o", "json", "local", "status", "--dir", cluster.root))["services"]
    ours = {(r["node"], r["name"]) for r in rows if r["name"].startswith(("mapper", "reducer"))}
    assert ours == {(n, s) for n in (1, 2) for s in ("mapper-1", "mapper-2", "reducer")}
    assert all(r["running"] and r["answering"] for r in rows)


def test_nodes_are_independent(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes
    name = unique("shared_name")
    (n1.data / name).write_bytes(b"one one\n")
    (n2.data / name).write_bytes(b"two two two\n")
    assert n1.cli("run", name).returncode == 0
    assert n2.cli("run", name).returncode == 0
    assert tally.read(n1.data / f"{name}_reduced") == {b"one": 2}
    assert tally.read(n2.data / f"{name}_reduced") == {b"two": 3}


EDGE_CASES = {"empty": b"", "blank": b"   \n\t ", "one-word": b"x" * 5000, "e-acute": "é".encode()}


def test_edge_case_files(node: Node) -> None:
    names = {case: unique(f"edge_{case}") for case in EDGE_CASES}
    for case, name in names.items():
        (node.data / name).write_bytes(EDGE_CASES[case])
    # One CLI process for the four jobs: the shell runs them one after the other.
    result = node.cli("-o", "json", "shell", input="".join(f"run {n}\n" for n in names.values()))
    assert result.returncode == 0
    assert result.stderr == ""
    for case, name in names.items():
        assert tally.read(node.data / f"{name}_reduced") == Counter(EDGE_CASES[case].split())


def test_file_in_subdirectory_map_and_reduce(node: Node) -> None:
    sub = node.data / unique("sub_dir")
    sub.mkdir()
    (sub / "f.txt").write_bytes(b"a b a\n")
    rel = f"{sub.name}/f.txt"
    assert node.cli("map", rel).returncode == 0
    assert (sub / "f.txt_I_1").is_file()
    reduced = node.cli("reduce", f"{rel}_I_1", f"{rel}_I_2")
    assert reduced.returncode == 0, reduced.stderr
    assert tally.read(sub / "f.txt_reduced") == {b"a": 2, b"b": 1}


def test_run_file_in_subdirectory(node: Node) -> None:
    sub = node.data / unique("sub")
    sub.mkdir()
    (sub / "f.txt").write_bytes(b"a b a\n")
    result = node.cli("run", f"{sub.name}/f.txt")
    assert result.returncode == 0, result.stderr
    assert tally.read(sub / "f.txt_reduced") == {b"a": 2, b"b": 1}


def test_missing_file(node: Node) -> None:
    result = node.cli("map", "no-such-file")
    assert result.returncode == 1
    assert "no such file in the data directory: no-such-file" in result.stderr
    result = node.cli("reduce", "no-such_I_1")
    assert result.returncode == 1
    assert "no-such_I_1" in result.stderr
    assert "[not_found]" in result.stderr


def test_reduce_of_a_bad_tally_keeps_old_output(node: Node) -> None:
    name = unique("bad")
    (node.data / f"{name}_I_1").write_bytes(tally.HEADER + b"a\t1\n")
    (node.data / f"{name}_I_2").write_bytes(tally.HEADER + b"b\t1\nnot a tally line\n")
    (node.data / f"{name}_reduced").write_bytes(tally.HEADER + b"old\t9\n")
    result = node.cli("reduce", f"{name}_I_1", f"{name}_I_2")
    assert result.returncode == 1
    assert f"{name}_I_2:3: expected <word>TAB<count>" in result.stderr
    assert "[bad_tally]" in result.stderr
    assert tally.read(node.data / f"{name}_reduced") == {b"old": 9}
    no_temp_files(node.data)


def test_reduce_refuses_non_intermediates(node: Node) -> None:
    result = node.cli("reduce", "plain.txt")
    assert result.returncode == 1
    assert "is not an intermediate file" in result.stderr
    result = node.cli("reduce", "a_I_1", "b_I_2")
    assert result.returncode == 1
    assert "intermediates of different files" in result.stderr


CORPUS_SEED = 11


@pytest.fixture(scope="module")
def corpus(cluster: Cluster) -> str:
    """A 2 MiB generated text in node 1's data directory, made by the real CLI."""
    node = cluster.nodes[0]
    name = unique("corpus")
    gen = paxmr("gen-corpus", "--size", "2MiB", "--seed", CORPUS_SEED, node.data / name)
    assert gen.returncode == 0, gen.stderr
    return name


def test_generated_2mib_file_mapper_tally_equals_counter(node: Node, corpus: str) -> None:
    name = corpus
    data = (node.data / name).read_bytes()
    assert len(data) == 2 << 20
    progress: list[dict[str, int]] = []
    # One mapper counts the whole file: more than one 1 MiB read chunk, so the carry is used.
    result = control.call(
        node.settings.mapper_socket(1),
        "map",
        {"file": name, "offset": 0, "size": len(data)},
        on_progress=progress.append,
    )
    assert result == {
        "output": f"{name}_I_1",
        "distinct": len(set(data.split())),
        "bytes": len(data),
    }
    assert tally.read(node.data / f"{name}_I_1") == Counter(data.split())
    assert progress
    assert progress[-1] == {"done": len(data), "total": len(data)}

    run = node.cli("run", name)
    assert run.returncode == 0, run.stderr
    assert tally.read(node.data / f"{name}_reduced") == Counter(data.split())


def test_mapper_range_checks(node: Node) -> None:
    name = unique("range")
    (node.data / name).write_bytes(b"abc def ghi")
    sock = node.settings.mapper_socket(2)
    assert control.call(sock, "map", {"file": name, "offset": 4, "size": 4})["distinct"] == 1
    assert tally.read(node.data / f"{name}_I_2") == {b"def": 1}
    with pytest.raises(control.RemoteError, match="past the end") as info:
        control.call(sock, "map", {"file": name, "offset": 8, "size": 4})
    assert info.value.code == "bad_args"
    with pytest.raises(control.RemoteError) as info:
        control.call(sock, "map", {"file": name, "offset": -1, "size": 4})
    assert info.value.code == "bad_args"


def test_concurrent_maps_on_one_mapper(node: Node) -> None:
    names = [unique("conc") for _ in range(6)]
    for i, name in enumerate(names):
        (node.data / name).write_bytes(b"w%d " % i * 1000)
    sock = node.settings.mapper_socket(1)

    def one(name: str) -> object:
        return control.call(sock, "map", {"file": name, "offset": 0, "size": 3000})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, names))
    assert [r["distinct"] for r in results] == [1] * 6  # type: ignore[index]
    for i, name in enumerate(names):
        assert tally.read(node.data / f"{name}_I_1") == {b"w%d" % i: 1000}


def test_gen_corpus_is_deterministic(node: Node, corpus: str, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = paxmr("-o", "json", "gen-corpus", "--size", "2MiB", "--seed", CORPUS_SEED, again)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"file": str(again), "bytes": 2 << 20, "seed": CORPUS_SEED}
    text = again.read_bytes()
    assert text == (node.data / corpus).read_bytes()
    decoded = text.decode(errors="replace")  # some multi-byte words
    assert any(ch > "\x7f" for ch in decoded)
    # Another seed gives another text (in-process with a small vocabulary, to stay quick).
    other, same = tmp_path / "other", tmp_path / "same"
    corpus_mod.generate(other, 100_000, seed=1, vocabulary=500)
    corpus_mod.generate(same, 100_000, seed=1, vocabulary=500)
    assert other.read_bytes() == same.read_bytes()
    corpus_mod.generate(same, 100_000, seed=2, vocabulary=500)
    assert other.read_bytes() != same.read_bytes()
    assert len(same.read_bytes()) == 100_000


def test_gen_corpus_bad_size_is_usage_error(tmp_path: Path) -> None:
    result = paxmr("gen-corpus", "--size", "lots", tmp_path / "x")
    assert result.returncode == 2
    assert "is not a size like" in result.stderr
    assert not (tmp_path / "x").exists()


def test_map_shows_a_progress_bar_on_a_terminal(node: Node, corpus: str) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [str(PAXMR), "-c", str(node.config), "map", corpus],
            stdout=subprocess.PIPE,
            stderr=follower,
            stdin=subprocess.DEVNULL,
            env=clean_env({"COLUMNS": "100"}),
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert f"map {corpus}".encode() in shown
    assert b"100%" in shown


def test_plain_map_output_has_no_progress_bar(node: Node, corpus: str) -> None:
    result = node.cli("map", corpus)
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith(f"mapped {2 << 20} bytes")


def test_local_up_on_a_running_cluster_keeps_it(cluster: Cluster) -> None:
    """`local up` is idempotent: every service keeps running, as the same process."""
    before = ok_json(paxmr("-o", "json", "local", "status", "--dir", cluster.root))["services"]
    ok(paxmr("local", "up", "--dir", cluster.root))
    after = ok_json(paxmr("-o", "json", "local", "status", "--dir", cluster.root))["services"]
    assert [(s["name"], s["pid"]) for s in after] == [(s["name"], s["pid"]) for s in before]
    other_size = paxmr("local", "up", "--nodes", "3", "--dir", cluster.root)
    assert other_size.returncode == 1
    assert "has 2 nodes, not 3" in other_size.stderr
    status = ok_json(cluster.nodes[0].cli("-o", "json", "status"))
    assert status["services"]["mapper-1"] == "up"
