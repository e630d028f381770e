"""The PRM's metrics are the ones the README documents (issue 13: "Document the metric names")."""

from __future__ import annotations

import re
from pathlib import Path

from paxmr import paxos
from paxmr.services.observe import Observer

README = Path(__file__).parents[2] / "README.md"


def test_every_metric_is_in_the_readme_table_and_every_row_is_a_metric(tmp_path: Path) -> None:
    observer = Observer(1, [2, 3], paxos.Membership(0, frozenset({1, 2, 3})), tmp_path / "db", 1.0)
    exposed = set()
    for family in observer.registry.collect():
        # The exposition's names: a counter's samples end in _total.
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    text = README.read_text()
    section = text[text.index("| metric | type | meaning |") :]
    section = section[: section.index("\n\n")]
    documented = set(re.findall(r"`(paxmr_[a-z_]+)", section))
    assert exposed == documented
