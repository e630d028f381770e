"""Text rendering of command results for people: tables and bars. JSON needs none of this."""

from __future__ import annotations

from typing import Any

from paxmr.control import printable  # words, file names and log values may hold escapes

BAR = 40


def status(r: dict[str, Any]) -> str:
    lines = [f"node {r['node']}"]
    lines += [f"  {name:<10} {state}" for name, state in r["services"].items()]
    prm = r.get("prm")
    if prm:
        state = "STOPPED" if prm["stopped"] else prm["role"]
        if not prm["voting"]:
            state += " (recovering, not voting)"
        peers = ", ".join(
            f"{p}:{'up' if v['connected'] else 'unreachable'}" for p, v in prm["peers"].items()
        )
        lines += [
            f"  replica    {state}, leader {prm['leader'] or 'unknown'}, ballot {prm['ballot']}",
            (
                f"  log        {prm['entries']} entries ({prm['slots']} slots),"
                f" digest {prm['digest'][:16]}"
            ),
            f"  peers      {peers or 'none'}",
        ]
    return "\n".join(lines)


def log(r: dict[str, Any]) -> str:
    entries = r["entries"]
    if not entries:
        return "the log is empty"
    lines = [f"{'pos':>4}  {'file':<32} {'node':>4} {'words':>12} {'distinct':>9}"]
    lines += [
        f"{e['position']:>4}  {printable(str(e['file'])):<32} {e.get('node', '?'):>4} "
        f"{e.get('words', 0):>12} {e.get('distinct', 0):>9}"
        for e in entries
    ]
    lines.append(f"log digest {r['digest']}")
    return "\n".join(lines)


def merged(r: dict[str, Any]) -> str:
    words = [(printable(w), n) for w, n in r["words"]]
    head = f"positions {r['positions']}: {r['total']} words, {r['distinct']} distinct"
    if not words:
        return head
    widest = max(len(w) for w, _ in words)
    peak = words[0][1]
    lines = [head]
    lines += [f"  {w:<{widest}} {n:>10} {'#' * max(1, round(BAR * n / peak))}" for w, n in words]
    return "\n".join(lines)


_LOG_KEYS = ("timestamp", "level", "event", "node", "role")


def log_line(record: dict[str, Any]) -> str:
    """One structured log record as a readable line: time, level, role@node, event, the rest."""
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in _LOG_KEYS)
    return printable(
        f"{record.get('timestamp', '')[:23]} {record.get('level', ''):<7} "
        f"{record.get('role', '?')}@{record.get('node', '?')} {record.get('event', '')} {rest}"
    ).rstrip()
