"""What a process imports before it serves: most of a PRM restart's CPU is imports (`paxmr bench
scale`), and `paxmr status` pays for everything the CLI imports too. Each check runs a fresh
interpreter and looks at sys.modules; none is timed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from paxmr.cli import cli

# Imported by what needs them only: the simulator and the benchmarks (their own commands),
# cryptography (making keys and certificates: paxmr/pki.py), the services (their `serve`).
_NOT_FOR_THE_PRM = ("paxmr.sim", "paxmr.bench", "cryptography")
_NOT_FOR_THE_CLI = (*_NOT_FOR_THE_PRM, "paxmr.services", "paxmr.paxos", "prometheus_client")


def _imported(statement: str) -> set[str]:
    code = f"{statement}; import sys; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def _among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


def test_paxmr_serve_prm_imports_neither_the_simulator_nor_cryptography() -> None:
    # `paxmr serve prm` (the unit's ExecStart) imports the CLI, then the PRM's module.
    modules = _imported("import paxmr.cli, paxmr.services.prm")
    assert "paxmr.services.prm" in modules
    assert _among(modules, _NOT_FOR_THE_PRM) == []


def test_the_cli_imports_no_service_and_no_core() -> None:
    modules = _imported("import paxmr.cli")
    assert "paxmr.control" in modules
    assert _among(modules, _NOT_FOR_THE_CLI) == []


def test_paxmr_sim_is_found_though_imported_only_when_asked_for() -> None:
    result = CliRunner().invoke(cli, ["sim", "--faults", "drop,meteor"])
    assert result.exit_code == 2
    assert "meteor" in result.output
    assert "sim" in CliRunner().invoke(cli, ["--help"]).output


def test_counting_words_loads_no_dataset_modules(tmp_path: Path) -> None:
    # The mapper's kernel builds its Acero plans from pyarrow._acero: pyarrow.acero (what
    # Table.group_by imports) imports pyarrow.dataset, and with it libarrow_s3 and other
    # libraries whose pages a mapper would carry for nothing.
    text = tmp_path / "text"
    text.write_bytes(b"the cat the\n" * 1000)
    modules = _imported(
        "from pathlib import Path; from paxmr.wordcount import count; "
        f"count.count_range_arrow(Path({str(text)!r}), 0, {text.stat().st_size})"
    )
    assert "pyarrow._acero" in modules
    assert _among(modules, ("pyarrow.acero", "pyarrow.dataset", "pyarrow.fs")) == []
