"""model.pt loads with ultralytics alone where ultralytics' own classes express the pruned network
(issue 33): every C2f/C3k2 whose two halves kept the same width goes back to ultralytics' class.
A C2f with unequal halves cannot be expressed by ultralytics' ``chunk(2)``: the file then needs
edgeprune importable, and the report and model card say so. Each check loads the file in a
fresh process where ``import edgeprune`` fails, and compares its outputs with the pruned module
edgeprune holds in memory."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.yolo import build, checkpoint_bytes, edgeprune_blocks

SIZE = 64

# Runs in a process where edgeprune cannot be imported; writes what the dense head's convs read
# (a random-weight detector's outputs barely depend on its input: the head's initial biases
# dominate them) and the head's output, for x.
LOADER = r"""
import sys
sys.modules["edgeprune"] = None  # any pickled reference to edgeprune fails to load
import numpy as np, torch
from ultralytics import YOLO
model = YOLO(sys.argv[1]).model.eval()
head = model.model[-1]
head.export, head.format, head.dynamic, head.shape, head.end2end = True, "onnx", False, None, False
features = []
head.register_forward_pre_hook(lambda _, args: features.extend(f.flatten().clone() for f in args[0]))
with torch.no_grad():
    out = model(torch.from_numpy(np.load(sys.argv[2])))
np.save(sys.argv[3], out.numpy())
np.save(sys.argv[4], torch.cat(features).numpy())
"""


def _features(net, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The pruned module's head input (flattened) and output for ``x``, as LOADER writes them."""
    features = []
    hook = net.model.model[-1].register_forward_pre_hook(lambda _, args: features.extend(f.flatten().clone() for f in args[0]))
    try:
        with torch.no_grad():
            out = net(x)["output0"]
    finally:
        hook.remove()
    return torch.cat(features).numpy(), out.numpy()


def _load_without_edgeprune(pt: Path, x: torch.Tensor, tmp_path: Path) -> subprocess.CompletedProcess:
    np.save(tmp_path / "x.npy", x.numpy())
    return subprocess.run([sys.executable, "-c", LOADER, str(pt), str(tmp_path / "x.npy"), str(tmp_path / "out.npy"), str(tmp_path / "feat.npy")],
                          capture_output=True, text=True, timeout=300)


def _pruned(family: str, widths_of) -> object:
    """``family`` built at SIZE px (dense head: every anchor compared, no top-k order), shrunk to
    ``widths_of(space)``."""
    net = build(family, 3, head="dense")
    space = ChannelSpace(net, (3, SIZE, SIZE), step=8)
    return space, space.shrink(space.plan(widths_of(space)))


def _equal_halves(space: ChannelSpace) -> list[int]:
    """Half of every group; then every block whose halves still differ (YOLO26's last C3k2: its
    attention half is not prunable, so its other half is cut alone) gets its first half back whole."""
    widths = list(space.widths_from_indices(space.uniform_indices(0.5)))
    names = [g.name for g in space.groups]
    for block in edgeprune_blocks(space.shrink(space.plan(widths)).model):
        i = names.index(f"model.{block}.cv0.conv")
        widths[i] = space.groups[i].full
    return widths


def _random(space: ChannelSpace) -> list[int]:
    rng = random.Random(0)
    return [rng.choice(g.options) for g in space.groups]


@pytest.mark.slow  # three detectors built, shrunk and loaded in fresh processes: about two minutes
@pytest.mark.parametrize("family", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_a_prune_with_equal_halves_loads_with_ultralytics_alone_and_computes_the_same(family, tmp_path):
    space, small = _pruned(family, _equal_halves)
    assert edgeprune_blocks(small.model) == []
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in space.model.parameters())
    pt = tmp_path / "model.pt"
    pt.write_bytes(checkpoint_bytes(small, str(tmp_path / "data.yaml"), SIZE))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    done = _load_without_edgeprune(pt, x, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    features, out = _features(small, x)
    assert out.shape == (2, 4 + 3, (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "feat.npy"), features, rtol=1e-4, atol=1e-4 * np.abs(features).max())
    # The in-memory module is untouched: the conversion works on the checkpoint's copy.
    assert any(type(m).__name__ == "SplitFreeC2f" for m in small.modules())


def test_unequal_halves_keep_edgeprunes_class_and_the_file_says_it_needs_edgeprune(tmp_path):
    space, small = _pruned("yolov8n.yaml", _random)
    blocks = edgeprune_blocks(small.model)
    assert blocks and all(b.startswith("model.") for b in blocks)
    pt = tmp_path / "model.pt"
    pt.write_bytes(checkpoint_bytes(small, str(tmp_path / "data.yaml"), SIZE))
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    done = _load_without_edgeprune(pt, x, tmp_path)
    assert done.returncode != 0 and "edgeprune" in done.stderr
    # With edgeprune importable it loads and computes what the pruned module computes.
    from ultralytics.nn.tasks import load_checkpoint

    loaded, _ = load_checkpoint(str(pt))
    head = loaded.model[-1]
    head.export, head.format, head.dynamic, head.shape = True, "onnx", False, None
    features, out = _features(small, x)
    theirs = []
    head.register_forward_pre_hook(lambda _, args: theirs.extend(f.flatten().clone() for f in args[0]))
    with torch.no_grad():
        np.testing.assert_allclose(loaded.eval()(x).numpy(), out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(torch.cat(theirs).numpy(), features, rtol=1e-4, atol=1e-4 * np.abs(features).max())


def test_the_detection_report_and_model_card_say_what_loading_model_pt_needs(tmp_path):
    from edgeprune.tasks.compose import Composition, make_detection_set
    from edgeprune.tasks.detection import Detection
    from edgeprune.exporters.model_card import _checkpoint_lines

    make_detection_set(tmp_path / "set", Composition(train=8, val=2, size=SIZE, seed=1))
    task = Detection(str(tmp_path / "set" / "data.yaml"), SIZE, holdout=2, seed=0)
    try:
        assert "checkpoint" not in task.describe()  # nothing written yet
        for widths_of, loads_with in ((_equal_halves, ["ultralytics"]), (_random, ["ultralytics", "edgeprune"])):
            _, small = _pruned("yolov8n.yaml", widths_of)
            assert set(task.extra_files(small)) == {"ultralytics"}
            checkpoint = task.describe()["checkpoint"]
            assert checkpoint["file"] == "model.pt" and checkpoint["loads_with"] == loads_with
            assert checkpoint["edgeprune_blocks"] == edgeprune_blocks(small.model)
            card = " ".join(_checkpoint_lines(checkpoint))
            assert ("needs edgeprune importable" in card) == (loads_with != ["ultralytics"])
    finally:
        task.close()
