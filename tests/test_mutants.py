"""tools/mutants.py, the mutation-testing runner over the verdict code, still runs: its --smoke mode
mutates BudgetPolicy a few times and the table it prints counts the mutants the tests killed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a fresh pytest per mutant: 20-60 s on a shared 2-core machine
def test_smoke_run_prints_the_table_with_killed_mutants():
    pytest.importorskip("cosmic_ray", reason="cosmic-ray is in the dev extra")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "mutants.py"), "--smoke"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^target\s+mutants\s+killed\s+survived\s+timeout", run.stdout, re.M), run.stdout
    row = re.search(r"^smoke\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", run.stdout, re.M)
    assert row, run.stdout
    mutants, killed, survived, timeout, error = map(int, row.groups())
    assert mutants >= 1 and killed >= 1 and error == 0, run.stdout + run.stderr[-2000:]
    assert mutants == killed + survived + timeout + error
