"""Candidate accuracy on Ray (--workers ray): the same report as a local run, and a worker that
dies mid-task retried without losing or double-counting a candidate.

Ray runs as a local cluster of this machine's 2 CPUs; the simulated device makes latency a fixed
function of the architecture, so two runs can be compared number for number.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_prune_command
from tiny_models import TinyResNet

from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import run_nsga2
from edgeprune.space.channels import ChannelSpace
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.task import Classification, Recipe
from edgeprune.api.settings import parse_workers

pytest.importorskip("ray")

TESTS = Path(__file__).parent
SIMULATED = TESTS / "fixtures" / "sim-fast.yaml"
RECIPE = Recipe(0.01, 64, 0.5, 4.0, progress=False)


def _without_timings(report: dict) -> dict:
    """The report less what differs between any two runs: wall times, and where work ran."""
    report = json.loads(json.dumps(report))
    report.pop("phases")
    report["finetune"].pop("seconds", None)
    for r in report["rounds"]:
        r.pop("search_s"), r.pop("finetune_s")
    search = report["search"]
    search.pop("wall_s"), search.pop("workers")
    for h in search["history"]:
        h.pop("wall_s")
    return report


def test_workers_option_is_checked():
    assert parse_workers("local") is None and parse_workers("ray") == "" and parse_workers("ray:auto") == "auto"
    for bad in ("ray:", "dask", "ray: "):
        with pytest.raises(UserError, match="--workers"):
            parse_workers(bad)


@pytest.mark.slow
def test_ray_workers_give_the_same_report_as_a_local_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    reports = {}
    for workers in ("local", "ray"):
        out = tmp_path / workers
        cmd = tiny_prune_command(out, tmp_path / f"{workers}.sqlite", "--workers", workers)
        cmd[cmd.index("--target") + 1] = str(SIMULATED)
        run = subprocess.run(cmd, cwd=TESTS, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode in (0, 1), run.stderr[-3000:]
        reports[workers] = json.loads((out / "report.json").read_text())
    assert reports["ray"]["search"]["workers"]["kind"] == "ray" and reports["local"]["search"]["workers"] == {"kind": "local"}
    assert reports["ray"]["search"]["evaluations"] > 5 and reports["ray"]["rounds"][0]["short_tune"]  # short tunes ran on Ray too
    assert _without_timings(reports["ray"]) == _without_timings(reports["local"])


class _Journal:
    def __init__(self):
        self.records = []

    def record(self, cand):
        self.records.append(cand.choice)


class DiesOnce(Classification):
    """Scores like Classification, but the first Ray worker to score a network dies mid-task."""

    def __init__(self, *args, marker: str, driver: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.driver = marker, driver

    def score(self, model):
        if os.getpid() != self.driver and not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().score(model)


def test_a_worker_that_dies_mid_task_is_retried_and_nothing_is_lost_or_counted_twice(tmp_path, monkeypatch):
    import ray

    from edgeprune.problem.workers import RayWorkers

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    data = load_data("digits", holdout=300, seed=0)

    def search(workers, task):
        profiler = Profiler(load_profile(str(SIMULATED)), use_cache=False)
        journal = _Journal()
        problem = PruningProblem(space, task, ProfiledLatency(space, profiler, 17), limit_ms=0.12, journal=journal, workers=workers)
        run_nsga2(problem, population=6, generations=2, seed=0, show_progress=False)
        profiler.close()
        return [(c.widths, c.accuracy) for c in problem.evaluated()], journal.records

    local, local_journal = search(None, Classification(data, RECIPE))
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(type(value)) or real_put(value, **kw))
    workers = RayWorkers("")
    try:
        marker = tmp_path / "died"
        remote, remote_journal = search(workers, DiesOnce(data, RECIPE, marker=str(marker), driver=os.getpid()))
    finally:
        workers.close()
    assert marker.exists()  # a worker did die
    assert puts == [tuple]  # the space, task and scores went to the object store once, not per task
    assert not ray.is_initialized()  # the cluster this run started is shut down
    assert remote == local
    assert remote_journal == local_journal and len(set(remote_journal)) == len(remote_journal)


def test_prune_without_ray_installed_says_how_to_get_it(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['ray'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    cmd = tiny_prune_command(tmp_path / "out", tmp_path / "c.sqlite", "--workers", "ray")
    run = subprocess.run(cmd, cwd=TESTS, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "edgeprune[ray]" in run.stderr and "Traceback" not in run.stderr
