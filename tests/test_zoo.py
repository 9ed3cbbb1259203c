"""A fast, representative slice of tools/zoo_sweep.py: shrink, forward, ONNX parity, top-1.

Small inputs keep it to seconds; the full sweep (every torchvision classifier at its native
size) is ``python tools/zoo_sweep.py``.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

_spec = importlib.util.spec_from_file_location("zoo_sweep", Path(__file__).parents[1] / "tools" / "zoo_sweep.py")
zoo_sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_sweep)


def _images(size):
    g = torch.Generator().manual_seed(0)
    return torch.randn(zoo_sweep.BATCH, 3, size, size, generator=g)


@pytest.mark.parametrize(
    "name,size",
    [
        ("resnet18", 32),
        ("mobilenet_v2", 32),
        ("mobilenet_v3_small", 32),
        ("efficientnet_b0", 32),
        ("shufflenet_v2_x0_5", 32),
        ("regnet_y_400mf", 32),
        ("densenet121", 32),
    ],
)
def test_cnn_shrinks_and_matches_onnx(name, size):
    row = zoo_sweep.check_model(name, _images, size=size)
    assert row["ok"], row
    assert row["macs_after"] < 0.8 * row["macs_before"]
    assert 0.3 < row["width_ratio"] < 0.7


def test_shufflenet_leaves_out_only_the_shuffled_groups():
    row = zoo_sweep.check_model("shufflenet_v2_x0_5", _images, size=32)
    assert row["groups"] > 0 and row["skipped"]
    assert all("shuffle" in s["reason"] or "cannot trace" in s["reason"] for s in row["skipped"])


def test_reduced_vit_prunes_mlps_and_skips_the_attention_width():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    row = zoo_sweep.check_model("vit_reduced", _images, model=vit, size=32)
    assert row["ok"], row
    assert row["groups"] == 2  # the two MLP hidden layers
    assert any("MultiheadAttention" in s["reason"] for s in row["skipped"])
