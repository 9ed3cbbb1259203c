"""A detection data set composed from Fashion-MNIST, in YOLO format, for pruning detectors offline.

No detection data set installs without a download here (Debian's index, searched for dataset,
coco, voc, kitti and pascal, has only dataset-fashion-mnist as image data; PyPI's dataset packages
fetch their images at run time), so this one is *composed*: Fashion-MNIST items pasted at random scales and places on noisy grey canvases. The boxes
are the tight bounding boxes of the pasted silhouettes (pixels brighter than ``INK``), so they are
exact, not estimated. Items on one canvas overlap by at most ``MAX_OVERLAP`` (IoU) so every box is
visible. Train canvases use Fashion-MNIST's train images, val canvases its test images: no item
appears in both.

Layout (what ultralytics reads)::

    OUT/data.yaml                 path, train, val, names
    OUT/images/{train,val}/N.png  canvases, 8-bit grey stored as RGB
    OUT/labels/{train,val}/N.txt  one line per item: class cx cy w h (normalised to [0, 1])
    OUT/COMPOSED.txt              how the set was made (seed, counts, sizes)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import UserError
from edgeprune.files import staged_folder

INK = 40  # uint8 brightness above which a pixel belongs to the pasted item
MAX_OVERLAP = 0.2
PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class Composition:
    """How a composed set is made; every field is recorded in COMPOSED.txt."""

    train: int = 2000
    val: int = 400
    size: int = 160
    min_items: int = 1
    max_items: int = 3
    min_scale: float = 0.15  # item side as a fraction of the canvas side
    max_scale: float = 0.45
    seed: int = 0

    def check(self) -> None:
        rules = [
            ("--train", self.train >= 1, "at least 1"),
            ("--val", self.val >= 1, "at least 1"),
            ("--size", 32 <= self.size <= 1280 and self.size % 32 == 0, "a multiple of 32 between 32 and 1280 (YOLO's stride)"),
            ("--max-items", 1 <= self.min_items <= self.max_items <= 20, "at least --min-items (1 to 20)"),
            ("--min-scale", 0.05 <= self.min_scale <= self.max_scale <= 0.9, "at most --max-scale, both between 0.05 and 0.9"),
        ]
        for flag, ok, what in rules:
            if not ok:
                raise UserError(f"{flag} must be {what}")


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _resize(item: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))


def compose_canvas(images: np.ndarray, labels: np.ndarray, comp: Composition, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One canvas (uint8 ``[size, size]``) and its labels ``(class, cx, cy, w, h)`` normalised."""
    s = comp.size
    canvas = np.clip(rng.normal(rng.uniform(10, 50), 8.0, (s, s)), 0, 255).astype(np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    rows = []
    for _ in range(int(rng.integers(comp.min_items, comp.max_items + 1))):
        k = int(rng.integers(len(labels)))
        side = int(rng.integers(round(comp.min_scale * s), round(comp.max_scale * s) + 1))
        item = _resize(images[k], side)
        ink = item > INK
        ys, xs = np.nonzero(ink)
        if len(xs) == 0:
            continue
        for _ in range(PLACEMENT_TRIES):
            y0, x0 = (int(v) for v in rng.integers(0, s - side + 1, 2))
            box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
            if all(_iou(box, b) <= MAX_OVERLAP for b in boxes):
                break
        else:
            continue  # no free place for this item: the canvas gets one fewer
        region = canvas[y0 : y0 + side, x0 : x0 + side]
        region[ink] = item[ink]
        boxes.append(box)
        x1, y1, x2, y2 = box
        rows.append((int(labels[k]), (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s))
    return canvas, rows


def make_detection_set(out: Path, comp: Composition) -> dict:
    """Write the composed set to ``out`` (a new or empty folder); returns the numbers written.

    Written into a temporary sibling and renamed into place, so an interrupted run leaves nothing.
    """
    from PIL import Image

    from edgeprune.tasks.data import FASHION_MNIST_CLASSES, load_data

    comp.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; pass a new folder to write the data set into")
    data = load_data("fashion-mnist", holdout=1, seed=comp.seed)
    sources = {
        "train": (data.train.images[:, 0].numpy(), data.train.labels.numpy()),
        "val": (data.test.images[:, 0].numpy(), data.test.labels.numpy()),
    }
    counts = {}
    with staged_folder(out) as tmp:
        for split, n in (("train", comp.train), ("val", comp.val)):
            rng = np.random.default_rng([comp.seed, 0 if split == "train" else 1])
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            items = 0
            for i in range(n):
                canvas, rows = compose_canvas(*sources[split], comp, rng)
                Image.fromarray(canvas).convert("RGB").save(tmp / "images" / split / f"{i:06d}.png")
                (tmp / "labels" / split / f"{i:06d}.txt").write_text("".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows))
                items += len(rows)
            counts[split] = {"images": n, "boxes": items}
        final = out.resolve()
        names = "\n".join(f"  {i}: {name}" for i, name in enumerate(FASHION_MNIST_CLASSES))
        (tmp / "data.yaml").write_text(f"# composed by edgeprune data make-detection (see COMPOSED.txt)\npath: {json.dumps(str(final))}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
        (tmp / "COMPOSED.txt").write_text(
            "A composed detection set, not a collected one: Fashion-MNIST items pasted on noisy grey canvases.\n"
            "Boxes are the tight boxes of each pasted silhouette (pixels > "
            f"{INK}); items overlap by IoU <= {MAX_OVERLAP}.\n"
            "train canvases use Fashion-MNIST train images; val canvases its test images.\n"
            + json.dumps({"composition": comp.__dict__, "counts": counts}, indent=2) + "\n"
        )
    return counts
