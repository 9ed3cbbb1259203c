"""Memory as a measured objective and constraint: the peak of one inference in the target's
runtime (edgeprune.profiling.memory), charged to candidates (edgeprune.problem.memory), binding the
search, the selection and widening (--max-memory-mb), and reported for baseline and pick."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TinyCNN, wide_cnn

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.problem.memory import require_memory_target, search_limit_mb
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.memory import MemoryMeasurementFailed, MemoryStats, measure_memory
from edgeprune.profiling.targets import load_profile
from edgeprune.search.nsga import within_memory
from edgeprune.select.selection import shortlist, widen
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.data import load_data
from edgeprune.tasks.task import Classification, Recipe
from test_search import Clock

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
SHAPE = (1, 1, 8, 8)


def _onnx(width: int) -> bytes:
    torch.manual_seed(0)
    return export_onnx_bytes(TinyCNN(width=width).eval(), SHAPE, 17)


def test_a_wider_network_peaks_higher_and_the_file_size_is_its_own():
    profile = load_profile(PROFILE)
    wide, narrow = _onnx(256), _onnx(32)
    big, small = measure_memory(profile, wide, SHAPE), measure_memory(profile, narrow, SHAPE)
    # 4.7 MB of weights more: ONNX Runtime holds them (and repacks them) for the session.
    assert big.peak_mb > small.peak_mb + 4
    assert big.file_mb == pytest.approx(len(wide) / 2**20)
    again = measure_memory(profile, wide, SHAPE)
    assert abs(again.peak_mb - big.peak_mb) < 2  # a fresh process each time: no allocator cache hides memory


def test_bytes_the_runtime_cannot_load_fail_in_one_line():
    with pytest.raises(MemoryMeasurementFailed, match="memory measurement on fast-cpu failed") as err:
        measure_memory(load_profile(PROFILE), b"not an onnx model", SHAPE)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("target", ["jetson-orin", "simulated"])
def test_a_runtime_without_a_memory_measurement_is_refused_in_one_line(target):
    with pytest.raises(UserError, match="choose e.g. --target x86-cpu"):
        require_memory_target(load_profile(target), remote=False)


def test_an_agent_target_is_refused_in_one_line():
    with pytest.raises(UserError, match="reports latency only"):
        require_memory_target(load_profile("x86-cpu"), remote=True)


def test_a_host_that_cannot_reset_a_peak_is_refused_before_anything_is_timed(monkeypatch):
    from edgeprune.problem import memory

    monkeypatch.setattr(memory, "can_measure_here", lambda: False)
    with pytest.raises(UserError, match="clear_refs"):
        require_memory_target(load_profile("x86-cpu"), remote=False)


def test_the_search_keeps_a_margin_under_the_memory_limit():
    # The verdict re-measures other bytes (the delivered file), which agree within about 1 MB.
    assert (search_limit_mb(20.0), search_limit_mb(200.0)) == (19.0, 196.0)


class _Memory:
    """A memory source whose architectures peak at ``mb(widths)`` MiB, counting what is asked."""

    def __init__(self, mb):
        self.mb, self.asked = mb, []

    def measure(self, widths, model=None):
        self.asked.append(tuple(widths))
        return MemoryStats(self.mb(tuple(widths)), 0.0)


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return ChannelSpace(TinyCNN(width=64).eval(), (1, 8, 8), step=16)


def _problem(space, memory, **options) -> PruningProblem:
    task = Classification(load_data("digits", holdout=300, seed=0), Recipe(0.01, 64, 0.5, 4.0, progress=False))
    return PruningProblem(space, task, Clock(lambda w: 0.01 * sum(w)), limit_ms=10.0, memory=memory, **options)


def test_the_memory_limit_is_a_second_constraint_and_memory_an_objective(space):
    memory = _Memory(lambda w: float(sum(w)))
    problem = _problem(space, memory, max_memory_mb=100.0, objective_names=("accuracy", "latency", "memory"))
    wide, narrow = problem.evaluate_widths((128, 64)), problem.evaluate_widths((32, 16))
    assert (wide.memory_mb, narrow.memory_mb) == (192.0, 48.0)
    assert problem.n_constr == 2
    assert problem.constraints([wide, narrow])[:, 1].tolist() == [92.0, -52.0]
    assert problem.objectives([wide, narrow])[:, 2].tolist() == [192.0, 48.0]
    assert (problem.fits_memory(wide), problem.fits_memory(narrow)) == (False, True)
    assert within_memory([wide, narrow], problem) == [narrow]  # the reported front and best feasible
    unlimited = _problem(space, None)
    assert unlimited.n_constr == 1 and unlimited.constraints([wide]).shape == (1, 1)


def test_selection_and_widening_stay_within_the_memory_limit(space):
    # Latency would let every network through; memory admits sums of widths up to 100 only.
    memory = _Memory(lambda w: float(sum(w)))
    problem = _problem(space, memory, max_memory_mb=100.0)
    cands = [problem.evaluate_widths(w) for w in [(128, 64), (48, 48), (64, 32), (16, 16)]]
    picked = shortlist(problem, cands, 10.0, size=4)
    assert {c.widths for c in picked} == {(48, 48), (64, 32), (16, 16)}
    grown, steps = widen(problem, problem.evaluate_widths((16, 16)), 10.0, lambda widths: True, passes=8)
    assert steps and sum(grown.widths) <= 100 < sum(grown.widths) + 16  # grown until the next step would not fit


def test_the_memory_objective_or_limit_needs_a_memory_source(space):
    with pytest.raises(ValueError, match="memory source"):
        _problem(space, None, max_memory_mb=10.0)
    with pytest.raises(ValueError, match="memory source"):
        _problem(space, None, objective_names=("accuracy", "memory"))


def _prune(tmp_path, out: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "edgeprune", "tiny_models:wide_cnn", "--weights", str(tmp_path / "w.pt"), "--data", "digits",
        "--holdout", "300", "--target", PROFILE, "--speedup", "1.1", "--population", "4", "--generations", "2",
        "--refine-top", "2", "--refine-epochs", "0", "--finetune-epochs", "0", "--no-progress", "--out", str(tmp_path / out),
        "--cache", str(tmp_path / "c.sqlite"), *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=TESTS, env={**__import__("os").environ, "PYTHONPATH": str(TESTS)})


def test_bad_memory_options_are_one_line_exit_2(tmp_path):
    torch.save(wide_cnn().state_dict(), tmp_path / "w.pt")
    bad = _prune(tmp_path, "a", "--max-memory-mb", "-3")
    assert bad.returncode == 2 and "--max-memory-mb must be a positive number" in bad.stderr and "Traceback" not in bad.stderr
    trt = _prune(tmp_path, "b", "--max-memory-mb", "50", "--target", "jetson-orin")
    assert trt.returncode == 2 and "runs tensorrt" in trt.stderr and "Traceback" not in trt.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_max_memory_mb_binds_measured_independently(tmp_path):
    """The unconstrained pick peaks over the limit, the constrained one within it: both measured
    here on the delivered model.onnx, in processes of their own, not taken from the run."""
    from edgeprune.tasks.training import train

    torch.manual_seed(0)
    model = wide_cnn()
    train(model, load_data("digits", holdout=300, seed=0).train, 1, lr=0.05, seed=0, progress=False)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    profile = load_profile(PROFILE)
    full = measure_memory(profile, export_onnx_bytes(model.eval(), SHAPE, 17), SHAPE).peak_mb
    smallest = measure_memory(profile, _onnx(16), SHAPE).peak_mb
    limit = round(smallest + 0.5 * (full - smallest), 1)

    free = _prune(tmp_path, "free")
    assert free.returncode == 0, free.stderr[-2000:]
    unconstrained = measure_memory(profile, (tmp_path / "free" / "model.onnx").read_bytes(), SHAPE).peak_mb
    assert unconstrained > limit  # the premise: a latency budget alone leaves the pick too big

    bound = _prune(tmp_path, "bound", "--max-memory-mb", str(limit))
    assert bound.returncode == 0, bound.stderr[-2000:]
    report = json.loads((tmp_path / "bound" / "report.json").read_text())
    constrained = measure_memory(profile, (tmp_path / "bound" / "model.onnx").read_bytes(), SHAPE).peak_mb
    assert constrained <= limit
    assert report["budget_met"] and report["memory"]["met"] and report["memory"]["latency_met"] and report["memory"]["limit_mb"] == limit
    assert report["memory"]["pruned"]["peak_mb"] == pytest.approx(constrained, abs=2)
    assert report["memory"]["baseline"]["peak_mb"] == pytest.approx(full, abs=2)
    assert "memory limit met" in bound.stdout + bound.stderr
    assert report["pareto"] and all(p["memory_mb"] <= limit for p in report["pareto"])
