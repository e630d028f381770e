"""The ``paxmr`` command: parses, calls a service's socket, renders text or JSON."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from paxmr import control, jobs, local, logs, paths, render
from paxmr import settings as settings_mod
from paxmr.settings import ConfigError, Settings
from paxmr.sim.command import sim

EXIT_ERROR, EXIT_USAGE, EXIT_DOWN, EXIT_DENIED, EXIT_NO_QUORUM = 1, 2, 3, 4, 5

_SIZE = re.compile(r"(?i)\s*([0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20,
          "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9}  # fmt: skip


class Size(click.ParamType):  # type: ignore[type-arg]
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.fullmatch(str(value))
        if m is None:
            self.fail(f"{value!r} is not a size like 4096, 64KiB, 256MiB or 1GiB", param, ctx)
        return int(m[1]) * _UNITS[m[2].lower()]


@dataclass
class Ctx:
    config: Path | None
    output: str
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = settings_mod.load(self.config)
        return self._settings

    @property
    def json(self) -> bool:
        return self.output == "json"

    def emit(self, result: Any, text: Callable[[Any], str]) -> None:
        click.echo(json.dumps(result, indent=1, ensure_ascii=False) if self.json else text(result))


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c", "--config", type=click.Path(path_type=Path, dir_okay=False),
    help="Config file [env PAXMR_CONFIG; default /etc/paxmr/paxmr.toml].",
)  # fmt: skip
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              help="Render results for people (text) or scripts (json).")  # fmt: skip
@click.version_option(package_name="paxmr")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, output: str) -> None:
    """paxmr: word count with MapReduce, results replicated by Multi-Paxos.

    Talks to this node's services over their Unix sockets. File names are relative to the
    node's data directory.
    """
    ctx.obj = Ctx(config, output)


# --- the word-count job ------------------------------------------------------------------------


def _progress_bar(total_hint: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = click.progressbar(length=max(total, 1), label=total_hint,
                                                   file=sys.stderr, show_pos=False)  # fmt: skip
            bar.render_progress()
        bar.update(done - bar.pos)
        if done >= total:
            bar.render_finish()

    return update


@cli.command("map")
@click.argument("file")
@pass_ctx
def map_cmd(c: Ctx, file: str) -> None:
    """Count FILE's words: one whitespace-aligned byte range per mapper, in parallel."""
    result = jobs.run_map(c.settings, file, _progress_bar(f"map {file}"))
    c.emit(result, lambda r: f"mapped {r['bytes']} bytes in {r['seconds']} s -> "
                             + " ".join(r["outputs"]))  # fmt: skip


@cli.command("reduce")
@click.argument("files", nargs=-1, required=True)
@pass_ctx
def reduce_cmd(c: Ctx, files: tuple[str, ...]) -> None:
    """Merge intermediate tallies F_I_1 F_I_2 ... into F_reduced."""
    result = jobs.run_reduce(c.settings, list(files))
    c.emit(result, lambda r: f"reduced -> {r['output']} ({r['distinct']} distinct words)")


@cli.command("run")
@click.argument("file")
@pass_ctx
def run_cmd(c: Ctx, file: str) -> None:
    """Map, reduce and replicate FILE: its tally lands in the replicated log."""
    mapped = jobs.run_map(c.settings, file, _progress_bar(f"map {file}"))
    reduced = jobs.run_reduce(c.settings, mapped["outputs"])
    replicated = jobs.replicate(c.settings, reduced["output"])
    result = {
        "file": file,
        "position": replicated["position"],
        "map": mapped,
        "reduce": reduced,
        "replicate": replicated,
    }
    c.emit(
        result,
        lambda r: (
            f"{file}: {r['map']['bytes']} bytes, {r['reduce']['distinct']} distinct words"
            f" -> {r['reduce']['output']} -> log position {r['position']}"
        ),
    )


@cli.command("status")
@pass_ctx
def status_cmd(c: Ctx) -> None:
    """Which of this node's services answer on their sockets."""
    s = c.settings
    sockets = {f"mapper-{i}": s.mapper_socket(i) for i in range(1, s.mappers + 1)}
    sockets["reducer"] = s.reducer_socket
    sockets["prm"] = s.prm_socket
    services: dict[str, str] = {}
    prm: dict[str, Any] | None = None
    for name, path in sockets.items():
        try:
            answer = control.call(path, "status", timeout=5.0)
            services[name] = "up"
            if name == "prm":
                prm = answer
        except control.ServiceDown:
            services[name] = "down"
        except control.PermissionDenied:
            services[name] = "denied"
        except (TimeoutError, control.RemoteError):
            services[name] = "not answering"
    c.emit({"node": s.node_id, "services": services, "prm": prm}, render.status)


@cli.command("shell")
@click.pass_context
def shell_cmd(ctx: click.Context) -> None:
    """An interactive console for this node: type a command without 'paxmr', 'help', or 'exit'."""
    c: Ctx = ctx.obj
    prefix = (["-c", str(c.config)] if c.config else []) + ["-o", c.output]
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(f"paxmr[{c.settings.node_id}]> " if interactive else "")
        except EOFError:
            return
        try:
            words = shlex.split(line)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if not words:
            continue
        if words[0] in ("exit", "quit"):
            return
        if words[0] in ("shell", "local", "serve"):
            click.echo(f"error: '{words[0]}' is not available inside the shell", err=True)
            continue
        if words[0] == "help":
            words = [*words[1:], "--help"]
        _run(prefix + words)


# --- the replicated log ------------------------------------------------------------------------


@cli.command("replicate")
@click.argument("file")
@click.option("--request-id", help="Retry an earlier replicate whose outcome was unknown.")
@pass_ctx
def replicate_cmd(c: Ctx, file: str, request_id: str | None) -> None:
    """Put the reduced tally FILE into the next free position of the replicated log.

    Each replicate has a request id; the log applies an id at most once, so retrying with the id
    an earlier attempt printed returns that attempt's position instead of adding a copy.
    """
    result = jobs.replicate(c.settings, file, request_id)
    c.emit(result, lambda r: f"{r['file']} -> log position {r['position']}")


@cli.command("stop")
@pass_ctx
def stop_cmd(c: Ctx) -> None:
    """Make this node's PRM behave as failed: it refuses replicates and ignores its peers."""
    result = control.call(c.settings.prm_socket, "stop")
    c.emit(result, lambda _r: "PRM stopped (resume with 'paxmr resume')")


@cli.command("resume")
@pass_ctx
def resume_cmd(c: Ctx) -> None:
    """Bring a stopped PRM back; it catches up the entries it missed."""
    result = control.call(c.settings.prm_socket, "resume")
    c.emit(result, lambda _r: "PRM resumed")


_POSITIONS = click.argument("positions", nargs=-1, required=True, type=click.IntRange(min=0))


@cli.command("total")
@_POSITIONS
@pass_ctx
def total_cmd(c: Ctx, positions: tuple[int, ...]) -> None:
    """Sum of all word counts of the log entries at POSITIONS."""
    result = control.call(c.settings.prm_socket, "total", {"positions": list(positions)})
    c.emit(result, lambda r: str(r["total"]))


@cli.command("print")
@pass_ctx
def print_cmd(c: Ctx) -> None:
    """The replicated log: the file names in log order."""
    result = control.call(c.settings.prm_socket, "print")
    c.emit(result, render.log)


@cli.command("merge")
@_POSITIONS
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the N most frequent words; 0 shows all.")  # fmt: skip
@pass_ctx
def merge_cmd(c: Ctx, positions: tuple[int, ...], top: int) -> None:
    """Word counts added across the log entries at POSITIONS."""
    args = {"positions": list(positions), "top": top}
    result = control.call(c.settings.prm_socket, "merge", args)
    c.emit(result, render.merged)


@cli.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True)
@pass_ctx
def logs_cmd(c: Ctx, follow: bool, lines: int) -> None:
    """This node's paxmr journal, readable (-o json passes the JSON lines through)."""
    argv = ["journalctl", "--unit=paxmr-*", "--output=cat", f"--lines={lines}"]
    if follow:
        argv.append("--follow")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: S603
    except FileNotFoundError:
        _fail("journalctl not found: paxmr logs reads the systemd journal", EXIT_ERROR)
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if c.json or not isinstance(record, dict):
                click.echo(line, nl=False)
            else:
                click.echo(render.log_line(record))


# --- services ----------------------------------------------------------------------------------


@cli.group()
def serve() -> None:
    """Run one of this node's services in the foreground (systemd does this)."""


@serve.command("mapper")
@click.option("--id", "mapper_id", type=click.IntRange(1, 64), required=True, help="Mapper number.")
@pass_ctx
def serve_mapper(c: Ctx, mapper_id: int) -> None:
    """Count words of byte ranges on request; writes F_I_<id>."""
    from paxmr.services import mapper  # noqa: PLC0415 - only the daemon needs it

    logs.configure(f"mapper-{mapper_id}", c.settings.node_id)
    asyncio.run(mapper.main(c.settings, mapper_id))


@serve.command("reducer")
@pass_ctx
def serve_reducer(c: Ctx) -> None:
    """Merge intermediate tallies on request; writes F_reduced."""
    from paxmr.services import reducer  # noqa: PLC0415 - only the daemon needs it

    logs.configure("reducer", c.settings.node_id)
    asyncio.run(reducer.main(c.settings))


@serve.command("prm")
@pass_ctx
def serve_prm(c: Ctx) -> None:
    """The Paxos Replication Module: this node's replica of the log."""
    from paxmr.services import prm  # noqa: PLC0415 - only the daemon needs it

    logs.configure("prm", c.settings.node_id)
    asyncio.run(prm.main(c.settings))


@cli.command("init")
@click.option(
    "--found",
    is_flag=True,
    help="Found a new cluster with the configured members (required: init does nothing else).",
)
@click.option(
    "--cluster-id",
    metavar="ID",
    help="The new cluster's id: give every founding member the same one [default: a new one].",
)
@pass_ctx
def init_cmd(c: Ctx, found: bool, cluster_id: str | None) -> None:
    """Found a new cluster: create this node's PRM storage as a founding member.

    Run once on each founding member, with the same --cluster-id, before their first start;
    the storage records the cluster id and the member list, and the PRM will not start with
    another list. Never run it on a node of a running cluster, not even after its disk was
    lost: such a node starts without init and votes again only after it has fenced off what
    it forgot and caught up from its peers.
    """
    from paxmr.services import prm  # noqa: PLC0415

    if not found:
        raise click.UsageError(
            "init founds a new cluster: pass --found (and the same --cluster-id on every"
            " founding member). A node of a running cluster, even one that lost its disk,"
            " starts without init."
        )
    path, identity = prm.initialize(c.settings, cluster_id)
    c.emit(
        {"storage": str(path), "cluster_id": identity.cluster_id, "members": identity.members},
        lambda r: (
            f"founded cluster {r['cluster_id']} with members"
            f" {', '.join(map(str, r['members']))}: {r['storage']}"
        ),
    )


@cli.command("refound")
@click.option(
    "--from",
    "survivor",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A copy of the most advanced survivor's prm.db (its PRM stopped when copied).",
)
@click.option("--cluster-id", metavar="ID", required=True, help="The new cluster's id.")
@click.option(
    "--accept-data-loss",
    is_flag=True,
    help="Confirm: entries acknowledged by the old cluster but missing from the survivor's log"
    " are lost for good.",
)
@pass_ctx
def refound_cmd(c: Ctx, survivor: Path, cluster_id: str, accept_data_loss: bool) -> None:
    """Re-found a cluster that lost a majority of its disks, from its most advanced survivor.

    Never automatic, and a last resort: the old cluster cannot recover by itself (it needs a
    majority that remembers), and whatever the survivor had not applied is lost, acknowledged
    or not. Stop every PRM of the cluster first; pick the survivor with the longest log
    (`paxmr status`); copy its prm.db aside (with its -wal file, if any); on EVERY member move
    the old prm.db away and run this with the same --from copy and the same new --cluster-id;
    then start them all. The new cluster's log starts as the survivor's applied log, on every
    member alike.
    """
    from paxmr.services import prm  # noqa: PLC0415
    from paxmr.storage import Identity, Storage  # noqa: PLC0415

    if not accept_data_loss:
        raise click.UsageError(
            "refound loses every entry the survivor had not applied, acknowledged or not:"
            " pass --accept-data-loss to confirm"
        )
    path = prm.db_path(c.settings)
    if path.exists():
        raise FileExistsError(
            f"{path} exists: move it away first (keep it until the new cluster works)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity(cluster_id, tuple(sorted(n.id for n in c.settings.nodes)))
    storage = Storage.open(path, bootstrap=True, identity=identity)
    try:
        slots = storage.take_over(survivor)
    finally:
        storage.close()
    click.echo(
        f"paxmr: WARNING: re-founded as cluster {cluster_id} with members"
        f" {', '.join(map(str, identity.members))} from {survivor}: entries the survivor had not"
        " applied are lost",
        err=True,
    )
    c.emit(
        {"storage": str(path), "cluster_id": cluster_id, "slots": slots},
        lambda r: f"re-founded {r['storage']}: {r['slots']} log slots taken over",
    )


# --- local cluster, corpus, benchmarks -----------------------------------------------------------


@cli.group("local")
def local_group() -> None:
    """A whole cluster on this machine, as background processes (no systemd needed)."""


_DIR = click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".local-cluster"),
    show_default=True,
    help="Cluster directory.",
)


@local_group.command("up")
@click.option("--nodes", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option("--mappers", type=click.IntRange(1, 64), default=2, show_default=True)
@_DIR
@pass_ctx
def local_up(c: Ctx, nodes: int, mappers: int, root: Path) -> None:
    """Start every node's services; prints how to address each node."""
    configs = local.up(root.resolve(), nodes, mappers)
    result = {"dir": str(root.resolve()), "configs": [str(p) for p in configs]}
    c.emit(result, lambda r: f"{len(configs)} nodes up in {r['dir']}\n" + "\n".join(
        f"  node {i}: paxmr -c {p} status" for i, p in enumerate(r["configs"], 1)))  # fmt: skip


@local_group.command("down")
@_DIR
@pass_ctx
def local_down(c: Ctx, root: Path) -> None:
    """Stop every service of the local cluster."""
    stopped = local.down(root.resolve())
    c.emit({"stopped": stopped}, lambda r: f"stopped {r['stopped']} services")


@local_group.command("status")
@_DIR
@pass_ctx
def local_status(c: Ctx, root: Path) -> None:
    """Every service of the local cluster: pid, running, answering its socket."""
    rows = local.status(root.resolve())
    c.emit(rows, lambda rs: "\n".join(
        f"n{r['node']} {r['name']:<10} pid {r['pid']:<8} "
        f"{'answering' if r['answering'] else 'running' if r['running'] else 'dead'}" for r in rs
    ) or f"no local cluster in {root}")  # fmt: skip


@cli.command("gen-corpus")
@click.option("--size", type=Size(), required=True, help="Bytes to write, e.g. 64MiB.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@pass_ctx
def gen_corpus(c: Ctx, size: int, seed: int, out: Path) -> None:
    """Write SIZE bytes of Zipf-distributed text (with some multi-byte words) to OUT."""
    from paxmr.wordcount import corpus  # noqa: PLC0415

    written = corpus.generate(out, size, seed)
    c.emit({"file": str(out), "bytes": written, "seed": seed},
           lambda r: f"wrote {r['bytes']} bytes to {r['file']}")  # fmt: skip


@cli.group()
def bench() -> None:
    """Benchmarks that print figures against a baseline measured in the same run."""


@bench.command("wordcount")
@click.option("--size", type=Size(), default="256MiB", show_default=True)
@click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Use this text instead of a generated one.")  # fmt: skip
@click.option("--mappers", type=click.IntRange(1, 64), default=2, show_default=True)
@pass_ctx
def bench_wordcount(c: Ctx, size: int, file: Path | None, mappers: int) -> None:
    """map + reduce through one local node's services vs. one Counter process."""
    from paxmr.bench import wordcount  # noqa: PLC0415

    result = wordcount.run(size, file, mappers)
    c.emit(result, lambda r: "\n".join(f"{k:>20}: {v}" for k, v in r.items()))


@bench.command("replicate")
@click.option("--sequential", type=click.IntRange(10), default=500, show_default=True,
              help="Entries replicated one after another.")  # fmt: skip
@click.option("--concurrent", type=click.IntRange(64), default=4000, show_default=True,
              help="Entries replicated with 64 in flight.")  # fmt: skip
@click.option("--catchup", type=click.IntRange(1), default=1000, show_default=True,
              help="Entries a stopped node misses before it resumes.")  # fmt: skip
@pass_ctx
def bench_replicate(c: Ctx, sequential: int, concurrent: int, catchup: int) -> None:
    """A local 3-node cluster with durable storage: latency, throughput, failover, catch-up."""
    from paxmr.bench import replicate  # noqa: PLC0415

    result = replicate.run(sequential, concurrent, catchup)
    c.emit(result, lambda r: "\n".join(f"{k:>20}: {v}" for k, v in r.items()))


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_object(Ctx).output = value  # type: ignore[union-attr]


def _accept_output_after_command(group: click.Group) -> None:
    """``paxmr status -o json`` as well as ``paxmr -o json status``."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_output_after_command(command)
        elif not any("--output" in p.opts for p in command.params):
            option = click.Option(
                ["-o", "--output"],
                type=click.Choice(["text", "json"]),
                expose_value=False,
                callback=_set_output,
                help="Render for people (text) or scripts (json).",
            )
            command.params.append(option)


_accept_output_after_command(cli)
cli.add_command(sim)  # it has an -o of its own


# --- entry point ---------------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"paxmr: {message}", err=True)
    raise SystemExit(code)


def _run(argv: list[str] | None = None) -> int:
    """Run one command line; returns the exit code (the shell keeps going after errors)."""
    try:
        cli.main(argv, prog_name="paxmr", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except ConfigError as exc:
        click.echo(f"paxmr: config: {exc}", err=True)
        return EXIT_ERROR
    except control.ServiceDown as exc:
        click.echo(f"paxmr: {exc}", err=True)
        return EXIT_DOWN
    except (control.PermissionDenied, PermissionError) as exc:
        click.echo(f"paxmr: {exc}", err=True)
        return EXIT_DENIED
    except control.RemoteError as exc:
        click.echo(f"paxmr: {exc} [{exc.code}]", err=True)
        return EXIT_NO_QUORUM if exc.code == "no_quorum" else EXIT_ERROR
    except paths.PathRefused as exc:
        click.echo(f"paxmr: {exc}", err=True)
        return EXIT_ERROR
    except (RuntimeError, OSError) as exc:
        click.echo(f"paxmr: {exc}", err=True)
        return EXIT_ERROR
    return 0


def main() -> None:
    raise SystemExit(_run())
