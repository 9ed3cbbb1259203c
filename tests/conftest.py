"""Shared fixtures: every test gets its own latency cache folder, never the user's."""

import sys

import pytest


def pytest_configure(config):
    """absl's log handler (absl comes with litert-torch) keeps the ``sys.stderr`` of the moment absl
    is first imported: under pytest, the capture's stream. When a later ``logging.config.dictConfig``
    (ultralytics' import) shuts every handler down, absl closes that stream unless it is the
    current ``sys.stderr``, which inside a ``capsys`` test it is not: pytest's own capture is then
    closed under it ("I/O operation on closed file") and the run dies. The real stderr instead."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("edgeprune-cache")))


@pytest.fixture
def tiny_problem(tmp_path):
    """Pruning problems for the tiny residual net (random weights, seeded) on sklearn's digits,
    timed in onnxruntime with the fast test profile on a private cache: ``.make(**options)``
    builds one (options as PruningProblem's); its profiler is closed after the test."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from tiny_models import TinyResNet

    from edgeprune.tasks.data import load_data
    from edgeprune.problem.latency import ProfiledLatency
    from edgeprune.problem.pruning import PruningProblem
    from edgeprune.profiling.profiler import Profiler
    from edgeprune.space.channels import ChannelSpace
    from edgeprune.profiling.targets import load_profile
    from edgeprune.tasks.task import Classification, Recipe

    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    task = Classification(load_data("digits", holdout=300, seed=0), Recipe(0.01, 64, 0.5, 4.0, progress=False))
    profiler = Profiler(load_profile(str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")), cache_path=tmp_path / "c.sqlite")
    latency = ProfiledLatency(space, profiler, opset=17)
    yield SimpleNamespace(
        space=space, task=task, profiler=profiler, latency=latency,
        make=lambda **options: PruningProblem(space, task, latency, **options),
    )
    profiler.close()


def tiny_prune_command(out, cache, *extra: str) -> list[str]:
    """The smallest real prune as a user types it: the tiny residual net on digits, the fast test
    profile, a 5 ms budget; run from the tests folder with it on PYTHONPATH.

    The budget does not bind (the net runs in about 0.05 ms), on purpose: the tests that use this
    command compare whole runs with each other (resumed against uninterrupted, a farm or Ray
    workers against one process), and a binding budget would let the fresh, uncached
    measurements of the selection flip their picks. Verdicts are tested on :func:`binding_prune_command`."""
    import sys
    from pathlib import Path

    profile = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
    return [
        sys.executable, "-m", "edgeprune", "tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300",
        "--target", profile, "--budget-ms", "5", "--population", "6", "--generations", "4", "--refine-top", "3",
        "--finetune-epochs", "0.5", "--no-progress", "--seed", "3", "--out", str(out), "--cache", str(cache), *extra,
    ]


# The binding prune's input: digits upscaled so that the convolutions, not onnxruntime's per-call
# overhead, take most of the time (at 8x8 the net runs in 0.05 ms and no width change shows).
BINDING_SHAPE = "1x16x16"
BINDING_SPEEDUP = 1.5


def run_edgeprune(args: list[str], timeout: int = 600):
    """``python -m edgeprune ARGS`` from the tests folder (its models importable); the finished process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": str(tests)}
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=tests, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """The tiny residual net trained on digits at ``BINDING_SHAPE`` with ``edgeprune train``."""
    path = tmp_path_factory.mktemp("tiny-weights") / "tiny_resnet.pt"
    run = run_edgeprune(["train", "tiny_models:tiny_resnet", "--data", "digits", "--input-shape", BINDING_SHAPE, "--holdout", "300",
                         "--epochs", "12", "--seed", "0", "--no-progress", "--out", str(path)])
    assert run.returncode == 0, run.stderr[-2000:]
    return path


def binding_prune_command(out, cache, weights, speedup: float = BINDING_SPEEDUP, *extra: str) -> list[str]:
    """A prune whose budget binds: the trained tiny residual net at ``BINDING_SHAPE`` must get
    ``speedup`` times faster than it measures at the start of the run (arguments for
    :func:`run_edgeprune`)."""
    from pathlib import Path

    profile = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
    return [
        "tiny_models:tiny_resnet", "--weights", str(weights), "--data", "digits", "--holdout", "300",
        "--input-shape", BINDING_SHAPE, "--target", profile, "--speedup", str(speedup), "--population", "6",
        "--generations", "4", "--refine-top", "3", "--finetune-epochs", "0.5", "--no-progress", "--seed", "3",
        "--out", str(out), "--cache", str(cache), *extra,
    ]


@pytest.fixture(scope="session")
def tiny_prune(tmp_path_factory, tiny_weights):
    """One real prune whose budget binds (:func:`binding_prune_command`), shared by every test
    that needs a finished run (the CLI's end-to-end and verdict tests, the exporters', the HTML
    report's): ``.out`` (never modified: copy it to change it), ``.cache`` (the run's latency
    cache), ``.report``, the command's ``.stderr`` and the trained ``.weights``."""
    import json
    from types import SimpleNamespace

    folder = tmp_path_factory.mktemp("tiny-prune")
    out, cache = folder / "out", folder / "latency.sqlite"
    run = run_edgeprune(binding_prune_command(out, cache, tiny_weights))
    assert run.returncode == 0, run.stderr[-2000:]
    return SimpleNamespace(
        out=out, cache=cache, report=json.loads((out / "report.json").read_text()), stderr=run.stderr, weights=tiny_weights,
    )
