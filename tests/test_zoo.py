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


class _Concat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c, self.d = torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(3, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 1)) + self.d(x)
        return self.head(y.mean((2, 3)))


def test_a_concat_whose_widths_torch_pruning_cannot_infer_is_left_out_not_fatal(monkeypatch):
    # Swin-S/B: past its recursion limit Torch-Pruning infers a concat input width as None and
    # then sums the widths (TypeError), which aborted the whole graph build.
    from torch_pruning.dependency import shape_infer

    monkeypatch.setattr(shape_infer, "infer_channels_between", lambda *a, **k: None)
    row = zoo_sweep.check_model("concat_unknown_widths", _images, model=_Concat(), size=16)
    assert row["ok"], row
    assert [s["group"] for s in row["skipped"]] == ["a"]  # a and b meet in the concat: one group
    assert "concat" in row["skipped"][0]["reason"]
    assert row["groups"] == 1  # the residual group (c, d) is still prunable
