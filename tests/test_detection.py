"""Detection: the composed data set, YOLO's space, and a prune whose outputs ultralytics and
onnxruntime both accept."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from edgeprune.cli import main
from edgeprune.tasks.compose import Composition, make_detection_set
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.yolo import build, split_free

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
SIZE = 64


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "set"
    make_detection_set(out, Composition(train=40, val=8, size=SIZE, seed=1))
    return out


def test_make_detection_writes_a_yolo_set_whose_boxes_are_the_pasted_items(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["data", "make-detection", str(out), "--train", "6", "--val", "2", "--size", "64", "--seed", "3"]) == 0
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["path"] == str(out.resolve()) and spec["train"] == "images/train" and len(spec["names"]) == 10
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        images = sorted((out / "images" / split).glob("*.png"))
        assert len(images) == n
        for image in images:
            assert Image.open(image).size == (64, 64)
            rows = [list(map(float, line.split())) for line in (out / "labels" / split / f"{image.stem}.txt").read_text().splitlines()]
            assert rows, "every canvas holds at least one item"
            assert all(0 <= c < 10 and 0 < w <= 1 and 0 < h <= 1 and 0 <= cx - w / 2 and cx + w / 2 <= 1 for c, cx, cy, w, h in rows)
    assert "composed" in (out / "COMPOSED.txt").read_text()
    # Same seed, same set: the composition is reproducible.
    again = tmp_path / "again"
    make_detection_set(again, Composition(train=6, val=2, size=64, seed=3))
    assert (again / "labels" / "train" / "000003.txt").read_text() == (out / "labels" / "train" / "000003.txt").read_text()


def test_each_box_is_the_tight_box_of_its_pasted_silhouette():
    """A solid 14×8 block inside a 28×28 item, pasted unscaled: its box is exactly the block."""
    from edgeprune.tasks.compose import compose_canvas

    item = np.zeros((1, 28, 28), dtype=np.uint8)
    item[0, 6:20, 10:18] = 255
    comp = Composition(size=64, min_items=2, max_items=2, min_scale=28 / 64, max_scale=28 / 64)
    canvas, rows = compose_canvas(item, np.array([3]), comp, np.random.default_rng(0))
    assert len(rows) == 2 and all(r[0] == 3 for r in rows)
    for _, cx, cy, w, h in rows:
        assert (round(w * 64), round(h * 64)) == (8, 14)
        x1, y1 = round((cx - w / 2) * 64), round((cy - h / 2) * 64)
        assert (canvas[y1 : y1 + 14, x1 : x1 + 8] == 255).all()
    assert (canvas == 255).sum() == 2 * 14 * 8  # nothing of the silhouettes outside the boxes


def test_make_detection_refuses_a_folder_with_files(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["data", "make-detection", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_split_free_c2f_computes_exactly_what_c2f_computes():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model(x)[0]
        assert split_free(model) == 8
        after = model(x)[0]
    assert torch.allclose(before, after, atol=1e-5)


def test_the_yolo_space_keeps_every_box_and_class_output_conv():
    torch.manual_seed(0)
    net = build("yolov8n.yaml", 3)
    space = ChannelSpace(net, (3, SIZE, SIZE), step=8)
    heads = {f"model.model.22.{branch}.{level}.2" for branch in ("cv2", "cv3") for level in range(3)}
    assert set(space.output_layer_names) == heads
    assert not heads & {g.name for g in space.groups} and len(space.groups) > 40
    small = space.shrink(space.plan(space.widths_from_indices(space.min_indices())))
    assert small(torch.zeros(1, 3, SIZE, SIZE))["output0"].shape == (1, 4 + 3, 84)


def test_detection_needs_a_yolo_data_set_and_a_yolo_model(tmp_path, capsys):
    assert main(["prune", "yolo:yolov8n.yaml", "--task", "detection", "--speedup", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--data yolo:PATH/data.yaml" in capsys.readouterr().err
    assert main(["prune", "torchvision:resnet18", "--task", "detection", "--data", "yolo:x.yaml", "--speedup", "2", "--out", str(tmp_path / "o")]) == 2
    assert "pass yolo:yolov8n.yaml" in capsys.readouterr().err
    assert main(["prune", "yolo:yolov8n.yaml", "--task", "detection", "--data", "yolo:x.yaml", "--input-shape", "3x100x100",
                 "--speedup", "2", "--out", str(tmp_path / "o")]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def _top_box(pred: torch.Tensor, margin: float):
    """The highest-scoring box after ultralytics' NMS, or None when the second is within ``margin``
    (a tie the numeric difference between runtimes may break either way)."""
    from ultralytics.utils.nms import non_max_suppression

    kept = non_max_suppression(pred, conf_thres=0.0, iou_thres=0.7, max_det=5)[0]
    if len(kept) >= 2 and kept[0, 4] - kept[1, 4] <= margin:
        return None
    return kept[0]


@pytest.mark.slow
def test_prune_detection_end_to_end_reloads_into_ultralytics_and_its_onnx_gives_torchs_boxes(tiny_set, tmp_path):
    out = tmp_path / "out"
    code = main([
        "prune", "yolo:yolov8n.yaml", "--task", "detection", "--data", f"yolo:{tiny_set / 'data.yaml'}",
        "--input-shape", f"3x{SIZE}x{SIZE}", "--holdout", "8", "--detection-metric", "mAP50", "--target", PROFILE,
        "--speedup", "1.4", "--population", "4", "--generations", "1", "--refine-top", "1", "--refine-epochs", "0",
        "--widen-passes", "0", "--finetune-epochs", "1", "--no-progress", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ])
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["kind"] == "detection" and report["task"]["metric"] == "mAP50"
    assert report["data"]["sizes"] == {"train": 32, "holdout": 8, "test": 8}
    assert report["artifacts"]["ultralytics"] == "model.pt"
    assert report["pruned"]["params"] < report["baseline"]["params"]

    # The #1 complaint: the pruned YOLO loads back into ultralytics and validates.
    from ultralytics import YOLO

    yolo = YOLO(str(out / "model.pt"))
    assert sum(p.numel() for p in yolo.model.parameters()) == report["pruned"]["params"]
    metrics = yolo.val(data=str(tiny_set / "data.yaml"), imgsz=SIZE, batch=4, device="cpu", workers=0, plots=False, verbose=False)
    assert 0.0 <= metrics.box.map50 <= 1.0

    # Its ONNX gives torch's boxes and scores on 8 images (the rebuilt model, from plan +
    # state_dict), and the same top box after NMS wherever that box is decided: a model this small,
    # trained this briefly, can collapse to outputs that barely depend on the image, and then many
    # anchors tie at the top and either runtime may pick any of them.
    from edgeprune.space.pruned import load_pruned

    net = load_pruned(out / "plan.json", out / "state_dict.pt")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from edgeprune.tasks.detection import Detection

    task = Detection(str(tiny_set / "data.yaml"), SIZE, 8, 0)
    images = torch.cat(task.calibration_batches())[:8]
    task.close()
    compared = ties = 0
    for x in images.split(1):
        with torch.no_grad():
            want = net(x)["output0"]
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        scores_error = float((want[:, 4:] - got[:, 4:]).abs().max())
        assert scores_error < 1e-4 and float((want[:, :4] - got[:, :4]).abs().max()) < 0.05
        want, got = _top_box(want, 10 * scores_error), _top_box(got, 10 * scores_error)
        if want is None:
            ties += 1
            continue
        compared += 1
        assert int(want[5]) == int(got[5]) and torch.allclose(want[:4], got[:4], atol=0.05)
    assert compared + ties == 8


# --- the score itself: ultralytics' validator on stand-in detectors whose answers are known -------


def _truth(folder: Path) -> dict[str, np.ndarray]:
    """sha256 of each image as the validator feeds it (RGB, CHW, uint8: at the set's own size the
    letterbox changes nothing) → its labels ``[class, cx, cy, w, h]`` (normalised)."""
    import hashlib

    import cv2

    truth = {}
    for image in sorted(folder.glob("images/*/*.png")):
        rgb = np.ascontiguousarray(cv2.imread(str(image))[..., ::-1].transpose(2, 0, 1))
        rows = (folder / "labels" / image.parent.name / f"{image.stem}.txt").read_text().split()
        truth[hashlib.sha256(rgb.tobytes()).hexdigest()] = np.array(rows, dtype=np.float32).reshape(-1, 5)
    return truth


def _stand_in(truth: dict[str, np.ndarray], answer: str):
    """A real YOLOv8n whose forward is replaced by an oracle that looks each image up in
    ``truth`` and answers, in the raw head's form ``[B, 4 + classes, anchors]`` (xywh in pixels,
    class scores): ``"truth"`` its labelled boxes and classes at score 1, ``"nothing"`` no box above
    score 0, ``"shifted"`` each box moved right by a fifth of its width (IoU 2/3 with the truth)."""
    import hashlib

    from ultralytics.nn.tasks import DetectionModel

    from edgeprune.tasks.yolo import build

    class Oracle(DetectionModel):
        def predict(self, x, *args, **kwargs):
            side, nc = x.shape[-1], len(self.names)
            found = []
            for image in x:
                key = hashlib.sha256((image * 255).round().to(torch.uint8).cpu().contiguous().numpy().tobytes()).hexdigest()
                found.append(truth.get(key, np.zeros((0, 5), dtype=np.float32)))
            out = torch.zeros(len(x), 4 + nc, max(1, max(len(f) for f in found)))
            for i, rows in enumerate(found):
                for j, (cls, cx, cy, w, h) in enumerate(rows):
                    if answer == "nothing":
                        continue
                    shift = 0.2 * w if answer == "shifted" else 0.0
                    out[i, :4, j] = torch.tensor([cx + shift, cy, w, h]) * side
                    out[i, 4 + int(cls), j] = 1.0
            return out

    torch.manual_seed(0)
    net = build("yolov8n.yaml", 10)
    net.model.__class__ = Oracle
    return net


@pytest.fixture(scope="module")
def scored_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "set"
    make_detection_set(out, Composition(train=5, val=4, size=SIZE, seed=2))
    return out, _truth(out)


def test_a_detector_that_answers_the_ground_truth_scores_1_and_one_that_answers_nothing_0(scored_set):
    from edgeprune.tasks.detection import Detection

    folder, truth = scored_set
    assert len(truth) == 9  # every image told apart by its pixels
    task = Detection(str(folder / "data.yaml"), SIZE, holdout=1, seed=0, metric="mAP50")
    try:
        perfect = _stand_in(truth, "truth")
        assert task.test_score(perfect) > 0.99 and task.score(perfect) > 0.99  # 0.995: ultralytics' 101-point AP
        assert task.test_score(_stand_in(truth, "nothing")) == 0.0
    finally:
        task.close()


def test_boxes_two_thirds_on_target_count_at_map50_and_in_four_of_ten_map50_95_thresholds(scored_set):
    from edgeprune.tasks.detection import Detection

    folder, truth = scored_set
    shifted = _stand_in(truth, "shifted")
    scores = {}
    for metric in ("mAP50", "mAP50-95"):
        task = Detection(str(folder / "data.yaml"), SIZE, holdout=1, seed=0, metric=metric)
        try:
            scores[metric] = task.test_score(shifted)
        finally:
            task.close()
    # IoU 2/3 passes the thresholds 0.50, 0.55, 0.60 and 0.65 of mAP50-95's ten.
    assert scores["mAP50"] > 0.99 and scores["mAP50-95"] == pytest.approx(0.4 * scores["mAP50"], abs=0.02)
