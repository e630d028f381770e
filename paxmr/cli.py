"""The ``paxmr`` command: parses, calls a service's socket, renders text or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from paxmr import control, jobs, local, logs, render, replies
from paxmr import settings as settings_mod
from paxmr.settings import ConfigError, Settings

EXIT_ERROR, EXIT_USAGE, EXIT_DOWN, EXIT_DENIED, EXIT_NO_QUORUM = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

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
        """Print `result` as JSON or as `text` renders it; both see the same JSON object (a
        reply model is dumped first)."""
        if isinstance(result, control.Result):
            result = result.model_dump(mode="json")
        click.echo(json.dumps(result, indent=1, ensure_ascii=False) if self.json else text(result))


pass_ctx = click.make_pass_decorator(Ctx)


class _Commands(click.Group):
    """paxmr's commands, with ``sim`` imported only when it is run or listed: it brings the
    whole simulator, which every other command (the services' ``serve`` among them) would
    import for nothing (tests/unit/test_imports.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "sim"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "sim":
            from paxmr.sim.command import sim  # noqa: PLC0415 - see the class

            return sim
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--request-id", help="Retry an earlier run whose replicate outcome was unknown.")
@pass_ctx
def run_cmd(c: Ctx, file: str, request_id: str | None) -> None:
    """Map, reduce and replicate FILE: its tally lands in the replicated log."""
    mapped = jobs.run_map(c.settings, file, _progress_bar(f"map {file}"))
    reduced = jobs.run_reduce(c.settings, mapped["outputs"])
    replicated = jobs.replicate(c.settings, reduced.output, request_id)
    result = {
        "file": file,
        "position": replicated.position,
        "map": mapped,
        "reduce": reduced.model_dump(mode="json"),
        "replicate": replicated.model_dump(mode="json"),
    }
    c.emit(
        result,
        lambda r: (
            f"{file}: {r['map']['bytes']} bytes, {r['reduce']['distinct']} distinct words"
            f" -> {r['reduce']['output']} -> log position {r['position']}"
        ),
    )


def _gather_status(s: Settings) -> dict[str, Any]:
    sockets: dict[str, tuple[Path, type[control.Result]]] = {
        f"mapper-{i}": (s.mapper_socket(i), replies.MapperStatus) for i in range(1, s.mappers + 1)
    }
    sockets["reducer"] = (s.reducer_socket, replies.ReducerStatus)
    sockets["prm"] = (s.prm_socket, replies.PrmStatus)
    services: dict[str, str] = {}
    prm: replies.PrmStatus | None = None
    for name, (path, model) in sockets.items():
        try:
            answer = control.call(path, "status", timeout=5.0, reply=model)
            services[name] = "up"
            if isinstance(answer, replies.PrmStatus):
                prm = answer
        except control.ServiceDown:
            services[name] = "down"
        except control.PermissionDenied:
            services[name] = "denied"
        except control.RemoteError as exc:
            # A reply this version cannot read says so (another version of paxmr there?); a
            # service whose connections are all running requests answers busy: retry later.
            named = {"bad_reply": f"bad reply: {exc}", "busy": "busy"}
            services[name] = named.get(exc.code, "not answering")
        except TimeoutError:
            services[name] = "not answering"
    problems = [f"{name} {state}" for name, state in services.items() if state != "up"]
    if prm is not None:
        problems += prm.problems
    return {"node": s.node_id, "services": services,
            "prm": prm.model_dump(mode="json") if prm is not None else None,
            "healthy": not problems, "problems": problems,
            "exit_code": _health_code(services, prm)}  # fmt: skip


def _health_code(services: dict[str, str], prm: replies.PrmStatus | None) -> int:
    """The documented exit code of `status` and `health` (see HEALTH_CODES)."""
    states = set(services.values())
    if "denied" in states:
        return EXIT_DENIED
    if "down" in states:
        return EXIT_DOWN
    if states - {"up", "busy"}:  # not answering, or a reply it cannot read
        return EXIT_ERROR
    if "busy" in states or prm is None or prm.problems:  # prm None: it was busy
        return EXIT_NO_QUORUM
    return 0


HEALTH_CODES = """Exit codes: 0 healthy; 3 a service is not running; 4 permission denied on a
socket; 5 the replica is stopped, has no leader, has no quorum of peers heard within the
election timeout, or is recovering lost storage (not voting), or a service is busy (every one
of its connections running a request: retry later); 1 a service does not answer.
With --cluster: 0 every member answered and is healthy; 5 a member did not answer or is not
healthy; 3, 4 or 1 as above for this node's PRM, which asks the others."""


def _gather_cluster(s: Settings, timeout: float) -> dict[str, Any]:
    """Every member's own view, gathered by this node's PRM over the peer network."""
    answer = control.call(
        s.prm_socket, "cluster", {"timeout": timeout}, timeout=timeout + 10, reply=replies.Cluster
    )
    problems = []
    for m in answer.members:
        if m.replica is None:
            problems.append(f"node {m.node}: did not answer ({m.error})")
        else:
            problems += [f"node {m.node}: {p}" for p in m.replica.problems]
    return {**answer.model_dump(mode="json"), "problems": problems, "healthy": not problems,
            "exit_code": EXIT_NO_QUORUM if problems else 0}  # fmt: skip


_CLUSTER = click.option(
    "--cluster", is_flag=True,
    help="Every member's own view, asked through this node's PRM over the peer network.",
)  # fmt: skip
_TIMEOUT = click.option(
    "--timeout", type=click.FloatRange(min=0.1, max=60), default=3.0, show_default=True,
    help="With --cluster: seconds to wait for the members' answers.",
)  # fmt: skip


@cli.command("status", epilog=HEALTH_CODES)
@_CLUSTER
@_TIMEOUT
@pass_ctx
def status_cmd(c: Ctx, cluster: bool, timeout: float) -> None:
    """This node's services, its replica (role, leader, ballot, log) and its peers; with
    --cluster, one row per member as that member sees itself.

    The exit code is the same as `paxmr health`'s.
    """
    if cluster:
        result = _gather_cluster(c.settings, timeout)
        c.emit(result, render.cluster_status)
    else:
        result = _gather_status(c.settings)
        c.emit(result, render.status)
    raise SystemExit(result["exit_code"])


@cli.command("health", epilog=HEALTH_CODES)
@_CLUSTER
@_TIMEOUT
@pass_ctx
def health_cmd(c: Ctx, cluster: bool, timeout: float) -> None:
    """Exit 0 only if every service answers and the replica has a leader and a quorum; with
    --cluster, only if every member answers and is healthy."""
    if cluster:
        result = _gather_cluster(c.settings, timeout)
        c.emit(result, render.cluster_health)
    else:
        result = _gather_status(c.settings)
        c.emit(result, render.health)
    raise SystemExit(result["exit_code"])


@cli.command("metrics")
@pass_ctx
def metrics_cmd(c: Ctx) -> None:
    """The PRM's Prometheus metrics (the same text as its HTTP endpoint, if one is configured)."""
    result = control.call(c.settings.prm_socket, "metrics", reply=replies.Metrics)
    c.emit(result, lambda r: r["text"].rstrip("\n"))


_NOT_IN_SHELL = ("shell", "local", "serve")


def _readline(commands: list[str]) -> Callable[[], None]:
    """Line editing, history in ~/.paxmr_history and Tab completion of command names."""
    try:
        import readline  # noqa: PLC0415 - only the interactive shell needs it
    except ImportError:  # Python built without it
        return lambda: None
    history = Path.home() / ".paxmr_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(1000)

    def complete(text: str, state: int) -> str | None:
        if readline.get_line_buffer()[: readline.get_begidx()].strip():
            return None  # only the first word: the command
        found = [c + " " for c in commands if c.startswith(text)]
        return found[state] if state < len(found) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(history)

    return save


def _shell_line(line: str, prefix: list[str]) -> int | None:
    """Run one line of the shell; its exit code, or None for 'exit'."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    if not words:
        return 0
    if words[0] in ("exit", "quit"):
        return None
    if words[0] in _NOT_IN_SHELL:
        click.echo(f"error: '{words[0]}' is not available inside the shell", err=True)
        return EXIT_USAGE
    if words[0] == "help":
        words = [*words[1:], "--help"]
    return _run(prefix + words)


@cli.command("shell")
@click.pass_context
def shell_cmd(ctx: click.Context) -> None:
    """An interactive console for this node: type a command without 'paxmr', 'help', or 'exit'.

    Ctrl-C cancels the running command (or the line being typed), Ctrl-D or 'exit' leaves.
    Reading commands from a pipe, the shell exits with the code of the last command that
    failed (0 if none did).
    """
    c: Ctx = ctx.obj
    prefix = (["-c", str(c.config)] if c.config else []) + ["-o", c.output]
    interactive = sys.stdin.isatty()
    names = cli.list_commands(ctx)
    commands = sorted([*(n for n in names if n not in _NOT_IN_SHELL), "help", "exit"])
    save = _readline(commands) if interactive else lambda: None
    failed = 0
    try:
        while True:
            try:
                line = input(f"paxmr[{c.settings.node_id}]> " if interactive else "")
            except EOFError:
                break
            except KeyboardInterrupt:
                if not interactive:
                    raise
                click.echo("^C", err=True)
                continue
            code = _shell_line(line, prefix)
            if code is None:
                break
            failed = code or failed
    finally:
        save()
    if failed and not interactive:
        raise SystemExit(failed)


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


@cli.group("member")
def member_group() -> None:
    """The cluster's members: who votes, who is catching up, and changes to them.

    Changes go through the replicated log (one at a time); the configuration file only says
    where founding members are. Run these on any node of the cluster.
    """


@member_group.command("list")
@pass_ctx
def member_list_cmd(c: Ctx) -> None:
    """Members with address, role (voter or learner), applied slots and last heard.

    "applied" and "behind" of other members are known on the leader (and where a member last
    reported them)."""
    result = control.call(c.settings.prm_socket, "members", reply=replies.Members)
    c.emit(result, render.members)


@member_group.command("add")
@click.argument("node", type=click.IntRange(min=1, max=2**31 - 1))
@click.argument("address", metavar="HOST:PORT")
@click.option("--wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the new node to catch up and become a voter.")  # fmt: skip
@pass_ctx
def member_add_cmd(c: Ctx, node: int, address: str, wait: float) -> None:
    """Add NODE, reachable at HOST:PORT: it joins as a learner, catches up, then votes.

    Start paxmr on the new node first (without `paxmr init`: it founds nothing) with its own
    key and certificate from the cluster's CA; its configuration lists the cluster's nodes.
    """
    args = {"node": node, "address": address, "wait": wait}
    result = control.call(
        c.settings.prm_socket, "member_add", args, timeout=wait + 60, reply=replies.MemberAdded
    )
    c.emit(
        result,
        lambda r: (
            f"node {r['node']} is a voter (epoch {r['epoch']})"
            if r["role"] == "voter"
            else f"node {r['node']} is a learner, still catching up: the leader makes it a voter"
            " once it has (see `paxmr member list`)"
        ),
    )


@member_group.command("remove")
@click.argument("node", type=click.IntRange(min=1, max=2**31 - 1))
@pass_ctx
def member_remove_cmd(c: Ctx, node: int) -> None:
    """Remove NODE from the cluster (the leader included: another one is elected).

    The leader refuses when too few of the voters left can vote now to make a quorum.
    Stop the removed node's services afterwards; it no longer votes or leads.
    """
    result = control.call(
        c.settings.prm_socket, "member_remove", {"node": node}, reply=replies.MemberRemoved
    )
    c.emit(result, lambda r: f"node {r['node']} removed (epoch {r['epoch']})")


@cli.command("stop")
@pass_ctx
def stop_cmd(c: Ctx) -> None:
    """Make this node's PRM behave as failed: it refuses replicates and ignores its peers."""
    result = control.call(c.settings.prm_socket, "stop", reply=replies.Stopped)
    c.emit(result, lambda _r: "PRM stopped (resume with 'paxmr resume')")


@cli.command("resume")
@pass_ctx
def resume_cmd(c: Ctx) -> None:
    """Bring a stopped PRM back; it catches up the entries it missed."""
    result = control.call(c.settings.prm_socket, "resume", reply=replies.Stopped)
    c.emit(result, lambda _r: "PRM resumed")


_POSITIONS = click.argument("positions", nargs=-1, required=True, type=click.IntRange(min=0))
_CONSISTENT = click.option(
    "--consistent", is_flag=True,
    help="Answer only once this node has applied every entry committed before the read"
    " started (confirmed with the leader); exit 5 if that cannot be done in time.",
)  # fmt: skip


_Query = TypeVar("_Query", replies.Total, replies.Printed, replies.Merged)


def _read(c: Ctx, op: str, args: dict[str, Any], reply: type[_Query]) -> _Query:
    """A query on the local replica; a possibly stale answer carries a warning on stderr."""
    result = control.call(c.settings.prm_socket, op, args, reply=reply)
    warning = result.freshness.warning
    if warning and not c.json:
        click.echo(f"paxmr: warning: this node's answer {warning}", err=True)
    return result


@cli.command("total")
@_POSITIONS
@_CONSISTENT
@pass_ctx
def total_cmd(c: Ctx, positions: tuple[int, ...], consistent: bool) -> None:
    """Sum of all word counts of the log entries at POSITIONS."""
    args = {"positions": list(positions), "consistent": consistent}
    result = _read(c, "total", args, replies.Total)
    c.emit(result, lambda r: str(r["total"]))


@cli.command("print")
@_CONSISTENT
@pass_ctx
def print_cmd(c: Ctx, consistent: bool) -> None:
    """The replicated log: the file names in log order."""
    result = _read(c, "print", {"consistent": consistent}, replies.Printed)
    c.emit(result, render.log)


@cli.command("merge")
@_POSITIONS
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="Show the N most frequent words; 0 shows all.")  # fmt: skip
@_CONSISTENT
@pass_ctx
def merge_cmd(c: Ctx, positions: tuple[int, ...], top: int, consistent: bool) -> None:
    """Word counts added across the log entries at POSITIONS."""
    args = {"positions": list(positions), "top": top, "consistent": consistent}
    result = _read(c, "merge", args, replies.Merged)
    c.emit(result, render.merged)


def _echo_log_line(c: Ctx, line: str) -> None:
    try:
        record = json.loads(line.removeprefix(line[:3]) if _PRIORITY.match(line) else line)
    except ValueError:
        record = None
    if c.json or not isinstance(record, dict):
        click.echo(line.rstrip("\n"))
    else:
        click.echo(render.log_line(record))


_PRIORITY = re.compile(r"<[0-7]>")


def _show_log_files(c: Ctx, files: list[Path], lines: int, follow: bool) -> None:
    """The last ``lines`` of each file, merged by time; with ``follow``, new lines as they come."""
    tails: list[str] = []
    for f in files:
        with f.open(errors="replace") as fh:
            tails += fh.readlines()[-lines:] if lines else []
    for line in sorted(tails, key=_timestamp):
        _echo_log_line(c, line)
    if not follow:
        return
    handles = [f.open(errors="replace") for f in files]
    try:
        for h in handles:
            h.seek(0, 2)
        while True:
            quiet = True
            for h in handles:
                for line in iter(h.readline, ""):
                    quiet = False
                    _echo_log_line(c, line)
            if quiet:
                time.sleep(0.2)
    finally:
        for h in handles:
            h.close()


def _timestamp(line: str) -> str:
    m = re.search(r'"timestamp":"([^"]*)"', line)
    return m[1] if m else ""


@cli.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True)
@pass_ctx
def logs_cmd(c: Ctx, follow: bool, lines: int) -> None:
    """This node's paxmr logs, readable (-o json passes the JSON lines through).

    On a systemd node: the journal of the paxmr units. On a local cluster's node (its config
    file sits next to a logs/ directory): the files there.
    """
    # The config file as every command finds it (-c, PAXMR_CONFIG or the default).
    logs = settings_mod.config_path(c.config).parent / "logs"
    if logs.is_dir():
        files = sorted(logs.glob("*.log"))
        if not files:
            _fail(f"no log files in {logs}", EXIT_ERROR)
        _show_log_files(c, files, lines, follow)
        return
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
            _echo_log_line(c, line)
    if proc.returncode:
        _fail(f"journalctl failed (exit {proc.returncode})", EXIT_ERROR)


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
    it forgot and caught up from its peers. init asks the configured peers first and refuses
    if one that answers runs a cluster already (another one, or this one with entries).
    """
    from paxmr.services import prm  # noqa: PLC0415

    if not found:
        raise click.UsageError(
            "init founds a new cluster: pass --found (and the same --cluster-id on every"
            " founding member). A node of a running cluster, even one that lost its disk,"
            " starts without init."
        )
    prm.uninitialized(c.settings)  # before asking the peers: the cheaper, surer refusal
    try:
        problems = prm.peers_in_a_cluster(c.settings, cluster_id)
    except ConfigError as exc:  # no TLS files to ask with: say so, and found
        problems = []
        click.echo(f"paxmr: warning: the peers were not asked whether they run a cluster: {exc}",
                   err=True)  # fmt: skip
    if problems:
        _fail(
            "init refused: a configured peer runs a cluster already: " + "; ".join(problems)
            + ". Never found a cluster again on a node of a running one (it would vote with"
            " promises it forgot): a node that lost its disk starts without init.",
            EXIT_ERROR,
        )  # fmt: skip
    path, identity = prm.initialize(c.settings, cluster_id)
    c.emit(
        {"storage": str(path), "cluster_id": identity.cluster_id, "members": identity.members},
        lambda r: (
            f"founded cluster {r['cluster_id']} with members"
            f" {', '.join(map(str, r['members']))}: {r['storage']}"
        ),
    )


@cli.command("backup")
@click.argument("name")
@pass_ctx
def backup_cmd(c: Ctx, name: str) -> None:
    """Copy this node's storage, consistently and online, to NAME in its backups directory.

    The copy is STATE_DIR/backups/NAME (/var/lib/paxmr/state/backups/NAME under systemd, readable
    by the service's user and root: the PRM may write nowhere else).

    Replicates go on meanwhile (SQLite's backup API). The copy holds the chosen log and the
    cluster's identity but none of the acceptor's promises: restored (`paxmr restore`), it
    rejoins as a non-voting replica that catches up, and votes again only after the lost-storage
    fence, so an old copy can never vote with promises it has forgotten.
    """
    result = control.call(
        c.settings.prm_socket, "backup", {"name": name}, timeout=3600.0, reply=replies.BackupInfo
    )
    c.emit(result, lambda r: (
        f"backed up {r['entries']:,} entries ({r['slots']:,} slots, {r['bytes']:,} bytes) to"
        f" {r['path']}, log digest {r['digest']}"))  # fmt: skip


@cli.command("restore")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A backup (`paxmr backup`).")  # fmt: skip
@pass_ctx
def restore_cmd(c: Ctx, source: Path) -> None:
    """Install a backup as this node's storage; its PRM must be stopped and have no storage.

    The node then starts as a non-voting replica: it catches up from its peers and votes again
    once the lost-storage fence is done (every other member answered, a majority promised).
    Run it as the service's user, or as root (the file then gets the state directory's owner).
    """
    from paxmr import backup  # noqa: PLC0415
    from paxmr.services import prm  # noqa: PLC0415

    try:
        control.call(c.settings.prm_socket, "status", timeout=5.0)
    except (control.ServiceDown, TimeoutError):
        pass
    else:
        _fail("the PRM is running: stop it first (systemctl stop paxmr-prm)", EXIT_ERROR)
    try:
        result = backup.restore(source, prm.db_path(c.settings), [n.id for n in c.settings.nodes])
    except backup.BackupError as exc:
        _fail(f"restore refused: {exc}", EXIT_ERROR)
    c.emit(result, lambda r: (
        f"restored {r['entries']:,} entries ({r['slots']:,} slots), log digest {r['digest']}."
        " Start the PRM: it rejoins as a non-voting replica, catches up, and votes again after"
        " the lost-storage fence"))  # fmt: skip


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
    member alike. Refused with the survivor's own cluster id, and while a configured peer
    answers that it runs another cluster.
    """
    import sqlite3  # noqa: PLC0415

    from paxmr import backup  # noqa: PLC0415
    from paxmr.services import prm  # noqa: PLC0415
    from paxmr.storage import Identity, Storage, mark_path  # noqa: PLC0415

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
    # The new storage votes from the start with no promise it made before, which is safe only
    # among members of the new cluster: the old one's members would let in a node with its id.
    try:
        with contextlib.closing(sqlite3.connect(f"file:{survivor}?mode=ro", uri=True)) as conn:
            old = backup.describe(conn)["cluster_id"]
    except backup.BackupError as exc:
        _fail(f"refound refused: {survivor}: {exc}", EXIT_ERROR)
    if old == cluster_id:
        _fail(
            f"refound refused: {cluster_id} is the survivor's cluster id; the re-founded"
            " cluster needs a new one (its old members would take this node for the one"
            " that lost its disk)",
            EXIT_ERROR,
        )
    try:
        running = [
            f"node {peer.id} ({peer.host}:{peer.port}) runs cluster {answer.cluster}"
            for peer, answer in asyncio.run(prm.ask_peers(c.settings))
            if answer is not None and answer.cluster and answer.cluster != cluster_id
        ]
    except ConfigError as exc:  # no TLS files to ask with: say so, and go on
        running = []
        click.echo(f"paxmr: warning: the peers were not asked what they run: {exc}", err=True)
    if running:
        _fail(
            "refound refused: " + "; ".join(running) + ". Stop every PRM of the old cluster"
            " first; a member that only lost its disk rejoins without init or refound",
            EXIT_ERROR,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mark_path(path).unlink(missing_ok=True)  # the old storage's: this one is new on purpose
    identity = Identity(cluster_id, tuple(sorted(n.id for n in c.settings.nodes)))
    storage = Storage.open(path, bootstrap=True, identity=identity, node=c.settings.node_id)
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
@click.option("--nodes", type=click.IntRange(2, 9), help="Members of a new cluster [default: 3].")
@click.option("--mappers", type=click.IntRange(1, 64), help="Mappers per node [default: 2].")
@_DIR
@pass_ctx
def local_up(c: Ctx, nodes: int | None, mappers: int | None, root: Path) -> None:
    """Start whatever of the cluster is not running (creating it if new); prints each node.

    Safe to run again: running services are kept, dead ones started, ports stay the same.
    A node whose storage (state/prm.db) was lost rejoins without a vote until it caught up.
    """
    configs = local.up(root.resolve(), nodes, mappers)
    result = {"dir": str(root.resolve()), "configs": [str(p) for p in configs]}
    c.emit(result, lambda r: f"{len(configs)} nodes up in {r['dir']}\n" + "\n".join(
        f"  node {i}: paxmr -c {p} status" for i, p in enumerate(r["configs"], 1)))  # fmt: skip


@local_group.command("add")
@_DIR
@pass_ctx
def local_add(c: Ctx, root: Path) -> None:
    """Start one more node for the local cluster; `paxmr member add` then makes it a member."""
    node, address = local.add(root.resolve())
    cfg = local.config_path(root.resolve(), 1)
    result = {"node": node, "address": address, "config": str(local.config_path(root, node))}
    c.emit(
        result,
        lambda r: (
            f"node {r['node']} started at {r['address']}; make it a member with\n"
            f"  paxmr -c {cfg} member add {r['node']} {r['address']}"
        ),
    )


@local_group.command("down")
@_DIR
@pass_ctx
def local_down(c: Ctx, root: Path) -> None:
    """Stop every service of the local cluster."""
    stopped = local.down(root.resolve())
    c.emit({"stopped": stopped}, lambda r: f"stopped {r['stopped']} services")


@local_group.command("status", epilog="Exit codes: 0 every node healthy and every service "
                      "answering; 3 a service is not running; 5 a node is unhealthy.")  # fmt: skip
@_DIR
@pass_ctx
def local_status(c: Ctx, root: Path) -> None:
    """The cluster at a glance: each node's role, leader, ballot, log, lag and health."""
    root = root.resolve()
    if not local.existing_nodes(root):
        _fail(f"no local cluster in {root} (`paxmr local up --dir {root}` creates one)", EXIT_ERROR)
    result: dict[str, Any] = {
        "dir": str(root),
        "nodes": local.nodes(root),
        "services": local.status(root),
    }
    c.emit(result, render.cluster)
    if any(not s["answering"] for s in result["services"]) or not result["services"]:
        raise SystemExit(EXIT_DOWN)
    if any(not (n.get("prm") or {}).get("healthy") for n in result["nodes"]):
        raise SystemExit(EXIT_NO_QUORUM)


@local_group.command("restart")
@click.option("--node", type=click.IntRange(1, 9), help="Only this node [default: every node].")
@click.option("--service", help="Only this service: prm, reducer, mapper-N [default: all].")
@_DIR
@pass_ctx
def local_restart(c: Ctx, node: int | None, service: str | None, root: Path) -> None:
    """Stop (if running) and start services again, waiting until they answer."""
    started = local.restart(root.resolve(), node, service)
    rows = [{"node": s.node, "service": s.name, "pid": s.pid} for s in started]
    c.emit(rows, lambda rs: "\n".join(
        f"restarted n{r['node']} {r['service']} (pid {r['pid']})" for r in rs))  # fmt: skip


@local_group.command("logs")
@click.option("--node", type=click.IntRange(1, 9), help="Only this node [default: every node].")
@click.option("--service", help="Only this service: prm, reducer, mapper-N [default: all].")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="Lines of each file to show first.")  # fmt: skip
@_DIR
@pass_ctx
def local_logs(  # noqa: PLR0917 - click passes options by keyword, but declares them so
    c: Ctx, node: int | None, service: str | None, follow: bool, lines: int, root: Path
) -> None:
    """The services' log files (DIR/nK/logs/SERVICE.log, JSON lines), readable or -o json."""
    pattern = f"n{node or '*'}/logs/{service or '*'}.log"
    files = sorted(root.resolve().glob(pattern))
    if not files:
        _fail(f"no log files {root / pattern}", EXIT_ERROR)
    _show_log_files(c, files, lines, follow)


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


@bench.command("tls")
@click.option("--sequential", type=click.IntRange(10), default=300, show_default=True,
              help="Replicates timed on a local 3-node cluster (TLS).")  # fmt: skip
@click.option("--rounds", type=click.IntRange(1), default=10, show_default=True,
              help="Alternating TLS / plain TCP rounds of the peer round trip.")  # fmt: skip
@pass_ctx
def bench_tls(c: Ctx, sequential: int, rounds: int) -> None:
    """What peer TLS costs: the peer round trip over TLS and plain TCP in the same run, and the
    replicate latency it implies (estimated for plain TCP, which the PRM no longer speaks)."""
    from paxmr.bench import tls  # noqa: PLC0415

    result = tls.run(sequential, rounds)
    c.emit(result, lambda r: "\n".join(f"{k:>26}: {v}" for k, v in r.items()))


@bench.command("scale")
@click.option("--entries", "sizes", default="0,100,400", show_default=True,
              help="Log sizes to measure at, in entries (the first is the baseline).")  # fmt: skip
@click.option("--tally", "tally_bytes", type=Size(), default="1MiB", show_default=True,
              help="Size of each tally replicated.")  # fmt: skip
@click.option("--word-bytes", type=click.IntRange(16), default=1000, show_default=True,
              help="Length of the tallies' words (short: slower to parse and decode).")  # fmt: skip
@click.option("--clients", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--largest", "largest", type=Size(), default="20MB", show_default=True,
              help="Size of one more tally of short words, replicated last (0: none).")  # fmt: skip
@click.option("--merges", type=click.IntRange(1), default=8, show_default=True,
              help="Clients merging 8 positions at a time for 10 s (merge storm).")  # fmt: skip
@click.option("--restarts", type=click.IntRange(1), default=1, show_default=True,
              help="Restarts of the follower's PRM at each size (the median shown).")  # fmt: skip
@pass_ctx
def bench_scale(  # noqa: PLR0917 - click passes the options by name
    c: Ctx,
    sizes: str,
    tally_bytes: int,
    word_bytes: int,
    clients: int,
    largest: int,
    merges: int,
    restarts: int,
) -> None:
    """The log at scale on a local 3-node cluster: memory, restart, catch-up, reads under load."""
    from paxmr.bench import scale  # noqa: PLC0415

    try:
        counts = [int(x) for x in sizes.split(",")]
    except ValueError:
        raise click.BadParameter(
            "a comma-separated list of entry counts", param_hint="--entries"
        ) from None
    result = scale.run(
        counts, tally_bytes, word_bytes, clients, largest=largest, merges=merges, restarts=restarts
    )
    c.emit(result, scale.render)


@bench.command("large")
@click.option("--sizes", default="8900000,40000000", show_default=True,
              help="Tally sizes in bytes, comma-separated.")  # fmt: skip
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True,
              help="Replicates of each tally (the median is shown).")  # fmt: skip
@pass_ctx
def bench_large(c: Ctx, sizes: str, rounds: int) -> None:
    """Replicate time of tallies over the 8 MiB value limit (chunks) against one value each."""
    from paxmr.bench import large  # noqa: PLC0415

    try:
        counts = [int(x) for x in sizes.split(",")]
    except ValueError:
        raise click.BadParameter("a comma-separated list of sizes", param_hint="--sizes") from None
    result = large.run(counts, rounds)
    c.emit(result, lambda r: render.table(
        ["tally bytes", "value limit", "median s", "times s", "retries", "log slots",
         "leader PRM peak MiB", "its encoder's", "its applier's"],
        [[x["tally_bytes"], x["value_bytes"], x["median_s"], " ".join(map(str, x["times_s"])),
          x["retries"], x["slots"], x["prm_peak_mib"], x["heavy-client_peak_mib"],
          x["apply_peak_mib"]] for x in r["chunked"] + r["one_value"]]))  # fmt: skip


@bench.command("storm")
@click.option("--tally", "tally_bytes", type=Size(), default="2MiB", show_default=True,
              help="Size of each tally file replicated.")  # fmt: skip
@click.option("--entries", type=click.IntRange(1), default=8, show_default=True,
              help="Log entries each merge of the merge storm lists.")  # fmt: skip
@click.option("--merges", type=click.IntRange(0), default=8, show_default=True,
              help="Concurrent merge calls (0: no merge storm).")  # fmt: skip
@click.option("--replicates", type=click.IntRange(0), default=24, show_default=True,
              help="Concurrent replicates of the tally (0: no replicate storm).")  # fmt: skip
@pass_ctx
def bench_storm(c: Ctx, tally_bytes: int, entries: int, merges: int, replicates: int) -> None:
    """Heavy client load on a local 3-node cluster: elections caused, replies, status p99."""
    from paxmr.bench import storm  # noqa: PLC0415

    result = storm.run(tally_bytes, entries, merges, replicates)
    c.emit(result, lambda r: "\n".join(
        "\n".join(f"{k:>28}: {v}" for k, v in one.items()) for one in r))  # fmt: skip


@bench.command("members")
@click.option(
    "--baseline", "baseline_s", type=click.FloatRange(1), default=5.0, show_default=True,
    help="Seconds of commits without a change, for comparison.",
)  # fmt: skip
@pass_ctx
def bench_members(c: Ctx, baseline_s: float) -> None:
    """Commit pauses on a local cluster under load: a member added, the leader removed."""
    from paxmr.bench import members  # noqa: PLC0415

    result = members.run(baseline_s)
    c.emit(result, lambda r: "\n".join(f"{k:>14}: {v}" for k, v in r.items()))


@cli.command("man")
@click.pass_context
def man_cmd(ctx: click.Context) -> None:
    """Print the paxmr(1) manual page, generated from the commands (man -l <(paxmr man))."""
    click.echo(render.man(cli, ctx.find_root()), nl=False)


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


_accept_output_after_command(cli)  # not sim: it has an -o of its own


# --- entry point ---------------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"paxmr: {message}", err=True)
    raise SystemExit(code)


def _run(argv: list[str] | None = None) -> int:  # noqa: C901 - one except per kind of error
    """Run one command line; returns the exit code (the shell keeps going after errors)."""
    try:
        cli.main(argv, prog_name="paxmr", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("paxmr: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            click.echo("paxmr: interrupted", err=True)
            return EXIT_INTERRUPTED
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
        rid = exc.request_id
        named = f" (request id {rid})" if rid is not None and rid not in str(exc) else ""
        click.echo(f"paxmr: {exc} [{exc.code}]{named}", err=True)
        return EXIT_NO_QUORUM if exc.code in control.RETRY_LATER else EXIT_ERROR
    except (RuntimeError, OSError) as exc:
        click.echo(f"paxmr: {exc}", err=True)
        return EXIT_ERROR
    return 0


def main() -> None:
    raise SystemExit(_run())
