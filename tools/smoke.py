"""What the benches' ``--smoke`` modes share: a measurement protocol short enough for seconds.

``--smoke`` runs a bench's own code path with tiny sizes so that the test suite can run every
bench (tests/test_benchmarks.py) and a bench cannot rot unseen. Its numbers are not results:
the timing windows are milliseconds long and nothing is trained to convergence.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from edgeprune.profiling.targets import MeasureSpec, Profile, load_profile

# A few runs per session, never "noisy" (so nothing is re-timed), a cached baseline always kept.
SMOKE_MEASURE = dict(
    warmup_runs=2, min_runs=5, max_runs=50, max_seconds=0.01, cv_threshold=100.0, repeats_if_noisy=0, sessions=2, anchor_tolerance=100.0,
)
SMOKE_NOTE = "--smoke: the code path at tiny sizes, not a result"


def smoke_profile(profile: Profile) -> Profile:
    """``profile`` with the smoke measurement protocol."""
    return dataclasses.replace(profile, measure=MeasureSpec(**SMOKE_MEASURE))


def smoke_profile_file(target: str, folder: Path) -> str:
    """A profile file: ``target`` (a shipped name or a path) with the smoke measurement protocol,
    for the code paths that take a target by name (``PruneConfig.target``, edgeprune.jobs.settings)."""
    data = yaml.safe_load(Path(load_profile(target).source).read_text(encoding="utf-8"))
    data["name"] = f"{data['name']}-smoke"
    data["measure"] = {**data.get("measure", {}), **SMOKE_MEASURE}
    path = Path(folder) / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


# The model a --smoke run prunes in place of a torchvision one: ``smoke:tiny_resnet`` (the benches
# put this folder on sys.path). torchvision's BasicBlock, so that ``--depth`` finds blocks to drop.
SMOKE_MODEL = "smoke:tiny_resnet"


def tiny_resnet(num_classes: int = 10, in_channels: int = 3):
    """A strided stem (32), two residual blocks, a strided conv (64), one more block, a linear head:
    about 3 MMACs at 3x16x16."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    def conv(c_in: int, c_out: int, stride: int = 1) -> list:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *conv(in_channels, 32, 2), BasicBlock(32, 32), BasicBlock(32, 32), *conv(32, 64, 2), BasicBlock(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def tiny_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32):
    """Two conv-BN-ReLU layers, pooled, a linear head (``smoke:tiny_cnn``)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    ).eval()
