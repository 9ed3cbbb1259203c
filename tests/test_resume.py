"""Checkpoints: a run killed with SIGKILL mid-search and resumed ends exactly where an
uninterrupted run with the same seed ends, without re-evaluating what it had already done."""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_prune_command

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(TESTS)}
# The factory model is imported, so resuming it needs the user's say-so.
RESUME = ["--no-progress", "--trust-model-code"]


def _cmd(out: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_prune_command(out, cache, *extra)


def _resume(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(out), *RESUME],
        cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``(cache, report)`` of an uninterrupted run of the same command. Every run of this module
    shares a copy of its latency cache, as runs on one device do: the latencies are then
    identical and any difference in the result comes from the checkpoint/replay logic."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    out, cache = folder / "out", folder / "c.sqlite"
    run = subprocess.run(_cmd(out, cache), cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not out.with_name("out.checkpoint").exists()  # a finished run leaves nothing to resume
    shared = tmp_path_factory.mktemp("shared-cache") / "c.sqlite"
    shutil.copy(cache, shared)
    return shared, json.loads((out / "report.json").read_text())


def _complete_lines(journal: Path) -> int:
    """Records in the journal; bytes after the last newline are a torn write, not a record."""
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def _kill_when(cmd: list[str], journal: Path, lines: int, delay: float, log: Path) -> None:
    """Start ``cmd``, SIGKILL it ``delay`` s after the journal holds ``lines`` records."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=TESTS, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if _complete_lines(journal) >= lines:
                time.sleep(delay)
                break
            time.sleep(0.005)
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, f"the run ended ({proc.returncode}) before it could be killed: {log.read_text()[-1500:]}"


def _same_history(report: dict, expected: dict) -> None:
    """Every generation's counts, best, front and hypervolume; only the wall times differ."""
    def timeless(r):
        return [{k: v for k, v in h.items() if k != "wall_s"} for h in r["search"]["history"]]

    assert timeless(report) == timeless(expected)


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    cache, expected = uninterrupted
    out = tmp_path / "killed"
    journal = tmp_path / "killed.checkpoint" / "round-1" / "evaluations.jsonl"
    _kill_when(_cmd(out, cache), journal, 5, 0.0, tmp_path / "stderr.txt")
    done_before = _complete_lines(journal)
    assert not out.exists()

    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["group_widths"] == expected["pruned"]["group_widths"]
    assert report["search"]["restored"] >= done_before
    # The report counts the run's evaluations, the restored ones included (it said 2 against 17).
    assert report["search"]["evaluations"] == expected["search"]["evaluations"]
    assert [h["best_accuracy"] for h in report["search"]["history"]] == [h["best_accuracy"] for h in expected["search"]["history"]]


def _tear(journal: Path) -> None:
    """What a kill in the middle of a write leaves: the first half of a record, no newline. If
    the kill really landed in a write, that torn line is already there and is left as it is."""
    data = journal.read_bytes()
    if data.endswith(b"\n"):
        last = data[:-1].rsplit(b"\n", 1)[-1]
        with open(journal, "ab") as f:
            f.write(last[: len(last) // 2])


@pytest.mark.slow
def test_three_kills_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    """Killed three times (each partial run resumed from the last), with a torn last record
    before every resume: the end is the uninterrupted run's, and every evaluation the journal
    holds was done exactly once."""
    cache, expected = uninterrupted
    rng = random.Random(3)
    total = expected["search"]["evaluations"]  # includes the 2 baseline evaluations, made before the journal opens
    out = tmp_path / "killed"
    journal = tmp_path / "killed.checkpoint" / "round-1" / "evaluations.jsonl"
    resume = [sys.executable, "-m", "edgeprune", "--resume", str(out), *RESUME]
    before, kills = b"", []
    for kill, at in enumerate(sorted(rng.sample(range(2, total - 4), 3))):
        lines = max(at, _complete_lines(journal) + 1)  # each partial run gets somewhere new
        _kill_when(_cmd(out, cache) if kill == 0 else resume, journal, lines, rng.uniform(0, 0.2), tmp_path / f"stderr-{kill}.txt")
        data = journal.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        kills.append((lines, complete.count(b"\n"), "torn by the kill" if len(data) > len(complete) else "torn by the test"))
        assert complete.startswith(before) and len(complete) > len(before)  # appended, the torn tail cut
        choices = [json.dumps(json.loads(line)["choice"]) for line in complete.splitlines()]
        assert len(set(choices)) == len(choices), "a completed evaluation was done (and journaled) again"
        before = complete
        _tear(journal)
    assert not out.exists()
    print(f"kills (waited for, journaled, tail): {kills}; uninterrupted evaluations {total}")

    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["group_widths"] == expected["pruned"]["group_widths"]
    _same_history(report, expected)
    # Every journaled evaluation came back; together with the new ones they are exactly the
    # uninterrupted run's: the torn records were neither lost twice nor glued to the next one.
    assert report["search"]["restored"] == len(before.splitlines())
    assert report["search"]["evaluations"] == expected["search"]["evaluations"]


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(tmp_path / "nothing")],
        cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("edgeprune: error: no checkpoint to resume") and "Traceback" not in run.stderr
