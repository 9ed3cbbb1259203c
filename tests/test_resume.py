"""Checkpoints: a run killed with SIGKILL mid-search and resumed ends exactly where an
uninterrupted run with the same seed ends, without re-evaluating what it had already done."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
ENV = {**os.environ, "PYTHONPATH": str(TESTS)}


def _cmd(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "edgeprune", "tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300",
        "--target", PROFILE, "--budget-ms", "5", "--population", "6", "--generations", "4",
        "--finetune-epochs", "0", "--no-progress", "--seed", "3", "--out", str(out), "--cache", str(cache), *extra,
    ]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    # Both runs share one latency cache, as two runs on one device do: the latencies are then
    # identical and any difference in the result would come from the checkpoint/replay logic.
    cache = tmp_path / "c.sqlite"
    full = subprocess.run(_cmd(tmp_path / "full", cache), cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    assert not (tmp_path / "full.checkpoint").exists()  # a finished run leaves nothing to resume
    expected = json.loads((tmp_path / "full" / "report.json").read_text())

    out = tmp_path / "killed"
    journal = tmp_path / "killed.checkpoint" / "round-1" / "evaluations.jsonl"
    proc = subprocess.Popen(_cmd(out, cache), cwd=TESTS, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, "the run finished before it could be killed"
    done_before = len(journal.read_text().splitlines())
    assert not out.exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(out), "--no-progress"],
        cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["group_widths"] == expected["pruned"]["group_widths"]
    assert report["search"]["restored"] >= done_before
    # Only the evaluations lost with the kill were done again.
    assert report["search"]["evaluations"] + report["search"]["restored"] == expected["search"]["evaluations"]
    assert [h["best_accuracy"] for h in report["search"]["history"]] == [h["best_accuracy"] for h in expected["search"]["history"]]


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(tmp_path / "nothing")],
        cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("edgeprune: error: no checkpoint to resume") and "Traceback" not in run.stderr
