"""Shared fixtures: every test gets its own latency cache folder, never the user's."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("edgeprune-cache")))


@pytest.fixture
def tiny_evaluator(tmp_path):
    """An Evaluator for the tiny residual net (random weights, seeded) on sklearn's digits, timed
    in onnxruntime with the fast test profile on a private cache; closes its profiler after."""
    from pathlib import Path

    import torch
    from tiny_models import TinyResNet

    from edgeprune.data import load_data
    from edgeprune.fitness import Evaluator
    from edgeprune.profiling.profiler import Profiler
    from edgeprune.space import ChannelSpace
    from edgeprune.targets import load_profile

    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    profiler = Profiler(load_profile(str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")), cache_path=tmp_path / "c.sqlite")
    yield Evaluator(space, load_data("digits", holdout=300, seed=0), profiler, opset=17)
    profiler.close()
