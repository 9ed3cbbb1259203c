"""YOLO11 and YOLO26 (issue 33): YOLO26 ships its end-to-end NMS-free output by default, the same
file ultralytics' own export writes; each family prunes, reloads into ultralytics, validates and
re-exports. YOLOv8's prune test is in test_detection.py."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.compose import Composition, make_detection_set
from edgeprune.tasks.yolo import build

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
SIZE = 64
ANCHORS = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "set"
    make_detection_set(out, Composition(train=40, val=8, size=SIZE, seed=1))
    return out


def test_yolo26_ships_end_to_end_by_default_and_dense_on_request_and_yolov8_has_no_end_to_end():
    x = torch.zeros(1, 3, SIZE, SIZE)
    assert build("yolo26n.yaml", 3)(x)["output0"].shape == (1, min(300, ANCHORS), 6)  # x1 y1 x2 y2 score class
    assert build("yolo26n.yaml", 3, head="dense")(x)["output0"].shape == (1, 4 + 3, ANCHORS)
    assert build("yolov8n.yaml", 3)(x)["output0"].shape == (1, 4 + 3, ANCHORS)
    with pytest.raises(UserError, match="one-to-one"):
        build("yolov8n.yaml", 3, head="end2end")


def test_yolo_head_is_refused_outside_detection(tmp_path, capsys):
    assert main(["prune", "torchvision:resnet18", "--yolo-head", "dense", "--speedup", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--yolo-head applies to --task detection" in capsys.readouterr().err


def test_the_end_to_end_yolo26_space_prunes_both_branches_and_keeps_both_output_convs():
    # The top-k output reaches the one-to-one branch only; the one-to-many branch, which
    # ultralytics' loss still trains, must be pruned with the layers feeding it all the same.
    space = ChannelSpace(build("yolo26n.yaml", 3), (3, SIZE, SIZE), step=8, probe=False)
    heads = {f"model.model.23.{branch}.{level}.2" for branch in ("cv2", "cv3", "one2one_cv2", "one2one_cv3") for level in range(3)}
    assert set(space.output_layer_names) == heads
    names = {g.name for g in space.groups}
    assert any(".23.cv2." in n for n in names) and any(".23.one2one_cv2." in n for n in names)
    # Each neck output feeds both branches: pruning it prunes both branches' first convs.
    feeding = [g for g in space.groups if ".23." not in g.name and any(".23.cv2." in c for c in g.coupled)]
    assert len(feeding) == 3 and all(any(".23.one2one_cv2." in c for c in g.coupled) for g in feeding)
    # The head and the neck outputs feeding it at their narrowest (the unprobed space also holds
    # the attention block's split, which the search's probe drops).
    near = [".23." in g.name or g in feeding for g in space.groups]
    small = space.shrink(space.plan(space.widths_from_indices([lo if n else hi for n, lo, hi in zip(near, space.min_indices(), space.full_indices())])))
    assert small(torch.zeros(1, 3, SIZE, SIZE))["output0"].shape == (1, min(300, ANCHORS), 6)
    small.model.train()
    raw = small.model(torch.zeros(2, 3, SIZE, SIZE))  # what the fine-tune runs: both branches
    assert set(raw) == {"one2many", "one2one"}


def _prune(tiny_set: Path, tmp_path: Path, model: str) -> Path:
    out = tmp_path / "out"
    code = main([
        "prune", f"yolo:{model}", "--task", "detection", "--data", f"yolo:{tiny_set / 'data.yaml'}",
        "--input-shape", f"3x{SIZE}x{SIZE}", "--holdout", "8", "--detection-metric", "mAP50", "--target", PROFILE,
        "--speedup", "1.4", "--population", "4", "--generations", "1", "--refine-top", "1", "--refine-epochs", "0",
        "--widen-passes", "0", "--finetune-epochs", "0.25", "--no-progress", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ])
    assert code in (0, 1)
    return out


def _image(path: Path) -> np.ndarray:
    """A composed val image (already SIZE x SIZE) as the file's input: RGB in [0, 1], NCHW."""
    from PIL import Image

    return (np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def _output(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0][0]


def _unmatched(a: np.ndarray, b: np.ndarray) -> int:
    """How many of ``a``'s detections ``b`` lacks (a row of the same class, score within 1e-4, box
    within 0.05 px): the same detections may come in another order where scores tie, which they
    do in a detector trained this briefly."""
    missing = 0
    for row in a:
        same = (b[:, 5] == row[5]) & (np.abs(b[:, 4] - row[4]) < 1e-4) & (np.abs(b[:, :4] - row[:4]).max(1) < 0.05)
        missing += not same.any()
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("family", ["yolo11n.yaml", "yolo26n.yaml"])
def test_each_family_prunes_reloads_into_ultralytics_validates_and_reexports(family, tiny_set, tmp_path):
    out = _prune(tiny_set, tmp_path, family)
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["ultralytics"] == "model.pt" and report["pruned"]["params"] < report["baseline"]["params"]
    from ultralytics import YOLO

    # ultralytics writes its export next to the checkpoint: a copy keeps edgeprune's model.onnx.
    theirs = tmp_path / "theirs" / "model.pt"
    theirs.parent.mkdir()
    shutil.copy(out / "model.pt", theirs)
    yolo = YOLO(str(theirs))
    assert sum(p.numel() for p in yolo.model.parameters()) == report["pruned"]["params"]
    # What the report says loading model.pt needs holds: ultralytics alone loads it exactly when
    # the report says so (in a process where edgeprune cannot be imported).
    checkpoint = report["task"]["checkpoint"]
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['edgeprune'] = None; from ultralytics import YOLO; YOLO(sys.argv[1])",
                              str(theirs)], capture_output=True, text=True, timeout=300)
    assert (blocked.returncode == 0) == (checkpoint["loads_with"] == ["ultralytics"]), blocked.stderr[-1000:]
    metrics = yolo.val(data=str(tiny_set / "data.yaml"), imgsz=SIZE, batch=4, device="cpu", workers=0, plots=False, verbose=False)
    assert 0.0 <= metrics.box.map50 <= 1.0
    end2end = family.startswith("yolo26")
    exported = Path(yolo.export(format="onnx", imgsz=SIZE, opset=17, nms=False if end2end else None))

    images = [_image(f) for f in sorted((tiny_set / "images" / "val").glob("*.png"))]
    assert len(images) == 8
    ours = [_output(out / "model.onnx", x) for x in images]
    classes = len(yaml.safe_load((tiny_set / "data.yaml").read_text())["names"])
    shape = (min(300, ANCHORS), 6) if end2end else (4 + classes, ANCHORS)
    assert all(o.shape == shape for o in ours)
    if not end2end:
        return
    # YOLO26 as deployed: edgeprune's file gives the detections of ultralytics' own NMS-free
    # export of the same model.pt, on the composed val images.
    for x, mine in zip(images, ours):
        other = _output(exported, x)
        assert other.shape == mine.shape
        assert _unmatched(mine, other) == 0 and _unmatched(other, mine) == 0
