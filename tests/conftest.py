"""Shared fixtures: every test gets its own latency cache folder, never the user's."""

import pytest


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

    from edgeprune.data import load_data
    from edgeprune.latency import ProfiledLatency
    from edgeprune.problem import PruningProblem
    from edgeprune.profiling.profiler import Profiler
    from edgeprune.space import ChannelSpace
    from edgeprune.targets import load_profile
    from edgeprune.task import Classification, Recipe

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
    profile, a 5 ms budget; run from the tests folder with it on PYTHONPATH."""
    import sys
    from pathlib import Path

    profile = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
    return [
        sys.executable, "-m", "edgeprune", "tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300",
        "--target", profile, "--budget-ms", "5", "--population", "6", "--generations", "4", "--refine-top", "3",
        "--finetune-epochs", "0.5", "--no-progress", "--seed", "3", "--out", str(out), "--cache", str(cache), *extra,
    ]


@pytest.fixture(scope="session")
def tiny_prune(tmp_path_factory):
    """One real prune shared by every test that needs a finished run (the CLI's end-to-end test,
    the exporters', the resume tests' reference): ``.out`` (never modified: copy it to change
    it), ``.cache`` (the run's latency cache), ``.report`` and the command's ``.stderr``."""
    import json
    import os
    import subprocess
    from pathlib import Path
    from types import SimpleNamespace

    tests = Path(__file__).parent
    folder = tmp_path_factory.mktemp("tiny-prune")
    out, cache = folder / "out", folder / "latency.sqlite"
    env = {**os.environ, "PYTHONPATH": str(tests)}
    run = subprocess.run(tiny_prune_command(out, cache), cwd=tests, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return SimpleNamespace(out=out, cache=cache, report=json.loads((out / "report.json").read_text()), stderr=run.stderr)
