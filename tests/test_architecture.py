"""The layering rules in pyproject.toml's [tool.importlinter] hold (run as part of the suite, so
CI checks them with the tests): profiling is torch-free and acyclic, nothing imports the CLI."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports")
    assert lint, "lint-imports is missing: install the dev extra (bash tools/setup.sh)"
    run = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
