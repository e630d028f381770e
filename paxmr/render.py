"""Text rendering of command results for people: tables and bars. JSON needs none of this."""

from __future__ import annotations

import inspect
import unicodedata
from typing import Any

import click

from paxmr.control import printable  # words, file names and log values may hold escapes

BAR = 40


def width(text: str) -> int:
    """Columns a terminal shows ``text`` in: an East Asian wide or full-width character takes
    two, a combining mark none (words and file names may hold either)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _pad(text: str, columns: int, *, right: bool = False) -> str:
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """Columns as wide as their widest cell (long names never break the table); integers get
    thousands separators and are right-aligned, as are the columns in ``right``."""
    right = set(right or ())
    cells = [[_cell(v) for v in row] for row in rows]
    for row in rows:
        right |= {i for i, v in enumerate(row) if isinstance(v, int) and not isinstance(v, bool)}
    widths = [max([width(h)] + [width(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(
            _pad(v, w, right=i in right)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def status(r: dict[str, Any]) -> str:
    lines = [f"node {r['node']}"]
    lines += [f"  {name:<10} {state}" for name, state in r["services"].items()]
    prm = r.get("prm")
    if prm:
        state = "STOPPED" if prm["stopped"] else prm["role"]
        if not prm["voting"]:
            state += " (recovering, not voting)"
        peers = ", ".join(
            _peer(p, v, follower=prm["role"] != "leader" and str(prm["leader"]) != p)
            for p, v in prm["peers"].items()
        )
        behind = f", {prm['behind']:,} slots behind the leader" if prm.get("behind") else ""
        lines += [
            f"  replica    {state}, leader {prm['leader'] or 'none'}, ballot {prm['ballot']}",
            (
                f"  log        {prm['entries']:,} entries ({prm['slots']:,} slots),"
                f" digest {prm['digest'][:16]}{behind}"
            ),
            f"  peers      {peers or 'none'}",
        ]
        if prm.get("log"):
            lines.append(f"  quota      {quota(prm['log'])}")
    problems = r["problems"]
    lines.append("  health     " + ("ok" if not problems else "\n             ".join(problems)))
    return "\n".join(lines)


def _peer(peer: str, v: dict[str, Any], *, follower: bool) -> str:
    """Up means heard (authenticated) within the election timeout, not merely TCP-connected.

    A follower hears only its leader (and candidates): another follower is "quiet", not down.
    """
    ago = v.get("heard_s_ago")
    if v.get("up"):
        return f"{peer}:up"
    if follower and v.get("connected"):
        return f"{peer}:quiet (a follower, heard only by the leader)"
    never = "never heard" if ago is None else f"silent {ago:.1f} s"
    return f"{peer}:DOWN ({never}{', tcp connected' if v.get('connected') else ''})"


def quota(log: dict[str, Any]) -> str:
    """The log's usage against its quota (limits.log_bytes, limits.log_entries)."""

    def of(used: int, limit: int | None, unit: str) -> str:
        return f"{used:,} {unit}" + (f" of {limit:,}" if limit is not None else " (no quota)")

    full = ": FULL, replicate is refused" if log.get("full") else ""
    size = of(log["bytes"], log["bytes_quota"], "bytes")
    return f"{size}, {of(log['entries'], log['entries_quota'], 'entries')}{full}"


def health(r: dict[str, Any]) -> str:
    prm = r.get("prm") or {}
    full = "\n  - log full: " + quota(prm["log"]) if (prm.get("log") or {}).get("full") else ""
    if r["healthy"]:
        return f"node {r['node']}: healthy{full}"
    return f"node {r['node']}: unhealthy\n" + "\n".join(f"  - {p}" for p in r["problems"]) + full


def log(r: dict[str, Any]) -> str:
    entries = r["entries"]
    if not entries:
        return "the log is empty"
    rows = [
        [
            e["position"],
            printable(str(e["file"])),
            e.get("node", "?"),
            e.get("words", 0),
            e.get("distinct", 0),
        ]
        for e in entries
    ]
    return table(["pos", "file", "node", "words", "distinct"], rows, right={2}) + (
        f"\nlog digest {r['digest']}"
    )


def members(r: dict[str, Any]) -> str:
    rows = [
        [
            m["node"],
            printable(str(m["address"] or "?")),
            m["role"] + (" (leader)" if m["leader"] else ""),
            m["applied"],
            m["behind"],
            None if m["heard_s_ago"] is None else f"{m['heard_s_ago']:.1f}s ago",
        ]
        for m in r["members"]
    ]
    headers = ["node", "address", "role", "applied", "behind", "heard"]
    return table(headers, rows, right={5}) + f"\nepoch {r['epoch']}, quorum {r['quorum']}"


def cluster(r: dict[str, Any]) -> str:
    """``paxmr local status``: one line per node, then the services that do not answer."""
    rows = []
    for n in r["nodes"]:
        p = n.get("prm")
        if p is None:
            rows.append([n["node"], str(n["port"]), n.get("error"), *[None] * 7])
            continue
        state = "STOPPED" if p["stopped"] else p["role"] + ("" if p["voting"] else " (recovering)")
        heard = sum(1 for v in p["peers"].values() if v.get("up"))
        ballot = "{}.{}".format(*p["ballot"])
        rows.append([
            n["node"], str(n["port"]), state, p["leader"], ballot, p["entries"], p["slots"],
            p.get("behind", 0), p["digest"][:12], f"{heard}/{len(p['peers'])}",
            "ok" if p.get("healthy") else "; ".join(p.get("problems", [])),
        ])  # fmt: skip
    headers = ["node", "port", "role", "leader", "ballot", "entries", "slots", "behind",
               "digest", "heard", "health"]  # fmt: skip
    rows = [row + [None] * (len(headers) - len(row)) for row in rows]
    out = [table(headers, rows, right={3})]
    bad = [s for s in r["services"] if not s["answering"]]
    total = len(r["services"])
    out.append(f"services: {total - len(bad)} of {total} answering")
    out += [
        f"  n{s['node']} {s['name']}: {'running, not answering' if s['running'] else 'dead'}"
        f" (pid {s['pid']}; `paxmr local restart --node {s['node']} --service {s['name']}`)"
        for s in bad
    ]
    return "\n".join(out)


def cluster_status(r: dict[str, Any]) -> str:
    """``paxmr status --cluster``: one row per member as it reported itself."""
    rows = []
    for m in r["members"]:
        p = m["replica"]
        heard = None if m["heard_s_ago"] is None else f"{m['heard_s_ago']:.1f}s ago"
        head = [m["node"], printable(str(m["address"] or "?")), m["role"]]
        if p is None:
            rows.append([*head, "NO ANSWER", *[None] * 7, heard, None, m["error"]])
            continue
        state = "STOPPED" if p["stopped"] else p["role"] + ("" if p["voting"] else " (recovering)")
        rows.append([
            *head, state, p["leader"], "{}.{}".format(*p["ballot"]), p["slots"], p["entries"],
            p["log_bytes"], m["behind"], p["digest"][:12], heard, p["version"],
            "ok" if not p["problems"] else "; ".join(p["problems"]),
        ])  # fmt: skip
    headers = ["node", "address", "member", "role", "leader", "ballot", "applied", "entries",
               "log bytes", "behind", "digest", "heard", "version", "health"]  # fmt: skip
    summary = f"asked node {r['asked_by']}; epoch {r['epoch']}, quorum {r['quorum']}"
    out = [table(headers, rows, right={4}), summary]
    silent = [m["node"] for m in r["members"] if m["replica"] is None]
    if silent:
        out.append("did not answer: " + ", ".join(f"node {n}" for n in silent))
    return "\n".join(out)


def cluster_health(r: dict[str, Any]) -> str:
    n = len(r["members"])
    if r["healthy"]:
        return f"cluster: healthy ({n} of {n} members answered, each healthy)"
    return "cluster: unhealthy\n" + "\n".join(f"  - {p}" for p in r["problems"])


def merged(r: dict[str, Any]) -> str:
    words = [(printable(w), f"{n:,}", n) for w, n in r["words"]]
    head = f"positions {r['positions']}: {r['total']:,} words, {r['distinct']:,} distinct"
    if not words:
        return head
    wide = max(width(w) for w, _, _ in words)
    count = max(len(c) for _, c, _ in words)
    peak = words[0][2]
    bars = ["#" * max(1, round(BAR * n / peak)) for _, _, n in words]
    lines = [head]
    lines += [
        f"  {_pad(w, wide)} {c:>{count}} {bar}" for (w, c, _), bar in zip(words, bars, strict=True)
    ]
    return "\n".join(lines)


_LOG_KEYS = ("timestamp", "level", "event", "node", "role")


def log_line(record: dict[str, Any]) -> str:
    """One structured log record as a readable line: time, level, role@node, event, the rest."""
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in _LOG_KEYS)
    return printable(
        f"{record.get('timestamp', '')[:23]} {record.get('level', ''):<7} "
        f"{record.get('role', '?')}@{record.get('node', '?')} {record.get('event', '')} {rest}"
    ).rstrip()


def roff(text: str) -> str:
    text = inspect.cleandoc(text)
    lines = [line.replace("\\", "\\e").replace("-", "\\-") for line in text.splitlines()]
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _command(group: click.Group, ctx: click.Context, name: str) -> click.Command:
    """A command the group lists (some are imported only when asked for: cli._Commands)."""
    command = group.get_command(ctx, name)
    if command is None:
        raise LookupError(f"{name} is listed but not found")
    return command


def man(group: click.Group, ctx: click.Context) -> str:
    """A paxmr(1) page in roff, from the commands' own help: it cannot drift from the code."""
    out = [
        '.TH PAXMR 1 "" "paxmr" "User Commands"',
        ".SH NAME",
        "paxmr \\- word count with MapReduce, results replicated by Multi\\-Paxos",
        ".SH SYNOPSIS",
        "\\fBpaxmr\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] [\\fB\\-o\\fR text|json] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION",
        roff(group.help or ""),
        ".SH COMMANDS",
    ]

    def walk(cmd: click.Command, path: str, parent: click.Context) -> None:
        sub = click.Context(cmd, info_name=path.rsplit(" ", 1)[-1], parent=parent)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(sub):
                walk(_command(cmd, sub, name), f"{path} {name}", sub)
            return
        usage = " ".join(cmd.collect_usage_pieces(sub))
        out.extend([".TP", f"\\fB{roff(path)}\\fR {roff(usage)}", roff(cmd.help or "")])
        for param in cmd.get_params(sub):
            record = param.get_help_record(sub)
            if record is not None and "--help" not in record[0]:
                out.extend([".RS", ".TP", f"\\fB{roff(record[0])}\\fR", roff(record[1]), ".RE"])
        if cmd.epilog:
            out.extend([".RS", roff(cmd.epilog), ".RE"])

    for name in group.list_commands(ctx):
        walk(_command(group, ctx, name), name, ctx)
    out += [
        ".SH EXIT STATUS",
        "0 ok, 1 error, 2 usage, 3 service not running, 4 permission denied,",
        "5 no quorum or an outcome not known yet, to retry (status and health: stopped, no",
        "leader or no quorum, or a service busy), 130 interrupted.",
        ".SH FILES",
        "/etc/paxmr/paxmr.toml, /run/paxmr/*.sock, /var/lib/paxmr/",
    ]
    return "\n".join(out) + "\n"
