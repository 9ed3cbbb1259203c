"""Object detection as a Task: a YOLO data set (``--data yolo:PATH/data.yaml``), scored by
ultralytics' own validator (mAP50-95 or mAP50), fine-tuned by ultralytics' own trainer.

The candidates are scored on a held-out part of the data set's *train* images (split off with the
run's seed); the data set's *val* images are the report's test split, which the search never sees.
The split is written as image lists in a private work folder, so the user's folder is only read
(ultralytics adds its usual ``labels/*.cache`` files next to the labels).

The fine-tune is ultralytics' recipe (its loss, augmentation and optimiser), run on the pruned
module in place; fractional epochs train on that fraction of the images for one epoch. It does not
distil from the unpruned model (ultralytics' trainer has no distillation).
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserError
from edgeprune.progress import console
from edgeprune.tasks.task import Task
from edgeprune.tasks.yolo import YoloNet, checkpoint_bytes, edgeprune_blocks, require_ultralytics, ultralytics_form

METRICS = {"mAP50-95": "metrics/mAP50-95(B)", "mAP50": "metrics/mAP50(B)"}
CALIBRATION_IMAGES = 128
BATCH = 16


def _image_files(source) -> list[Path]:
    """The images a data.yaml split names: a folder (searched recursively), a .txt list, or a list."""
    from ultralytics.data.utils import IMG_FORMATS

    items = source if isinstance(source, (list, tuple)) else [source]
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
        elif path.suffix == ".txt" and path.is_file():
            root = path.parent
            files += [Path(line) if Path(line).is_absolute() else root / line for line in path.read_text().split() if line]
    return files


class Detection(Task):
    """mAP of a YOLO detector on a data set in ultralytics' format (see the module doc)."""

    name = "detection"

    def __init__(self, data_yaml: str, imgsz: int, holdout: int, seed: int, metric: str = "mAP50-95"):
        require_ultralytics()
        from ultralytics.data.utils import check_det_dataset

        if metric not in METRICS:
            raise UserError(f"unknown detection metric {metric!r}; choose {' or '.join(METRICS)}")
        if not Path(data_yaml).is_file():
            raise UserError(f"data set file {data_yaml} not found; pass --data yolo:PATH/data.yaml (make one with `edgeprune data make-detection OUT`)")
        try:
            info = check_det_dataset(str(data_yaml), autodownload=False)
        except Exception as exc:  # ultralytics raises assorted errors for a bad yaml or missing folders
            raise UserError(f"ultralytics cannot read {data_yaml} ({str(exc).strip().splitlines()[0][:200]}); fix the data.yaml") from None
        self.metric, self.imgsz = metric, int(imgsz)
        self.data_yaml = str(Path(data_yaml).resolve())
        self.names = {int(k): str(v) for k, v in info["names"].items()}
        self.num_classes = len(self.names)
        train, test = _image_files(info["train"]), _image_files(info["val"])
        if len(train) < 4 or not test:
            raise UserError(f"{data_yaml} names {len(train)} train and {len(test)} val images; a detection run needs at least 4 train and 1 val image")
        order = np.random.default_rng(seed).permutation(len(train))
        n_hold = max(1, min(holdout, len(train) // 5))
        self.sizes = {"train": len(train) - n_hold, "holdout": n_hold, "test": len(test)}
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeprune-detection-"))
        self._train_files = [train[i] for i in order[n_hold:]]
        lists = {"train": self._train_files, "holdout": [train[i] for i in order[:n_hold]], "test": test}
        for split, files in lists.items():
            (self.workdir / f"{split}.txt").write_text("".join(f"{f.resolve()}\n" for f in files))
        names = "".join(f"  {k}: {v!r}\n" for k, v in self.names.items())
        self.search_yaml = self._yaml("search", "holdout", names)
        self.test_yaml = self._yaml("test", "test", names)
        self._calibration = None
        self._tunes = 0
        self._checkpoint: dict | None = None  # what loading model.pt needs, once extra_files wrote it

    def _yaml(self, name: str, val_split: str, names: str) -> str:
        path = self.workdir / f"{name}.yaml"
        path.write_text(f"path: {self.workdir}\ntrain: train.txt\nval: {val_split}.txt\nnames:\n{names}")
        return str(path)

    # --- the Task protocol -----------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.imgsz, self.imgsz)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def calibration_batches(self) -> list[torch.Tensor]:
        """The first train images, letterboxed to the input size as ultralytics' validator does."""
        if self._calibration is None:
            import cv2
            from ultralytics.data.augment import LetterBox

            box = LetterBox((self.imgsz, self.imgsz), auto=False, scaleup=True)
            images = []
            for f in self._train_files[:CALIBRATION_IMAGES]:
                bgr = cv2.imread(str(f))
                if bgr is None:
                    raise UserError(f"cannot read image {f}; remove it from the data set or fix it")
                images.append(torch.from_numpy(np.ascontiguousarray(box(image=bgr)[..., ::-1].transpose(2, 0, 1))))
            self._calibration = [b.float() / 255.0 for b in torch.stack(images).split(32)]
        return self._calibration

    def score(self, model: nn.Module) -> float:
        return self._map(model, self.search_yaml)

    def test_score(self, model: nn.Module) -> float:
        return self._map(model, self.test_yaml)

    def _map(self, net: YoloNet, yaml: str) -> float:
        from ultralytics.models.yolo.detect import DetectionValidator

        with ultralytics_form(net) as model:
            stats = DetectionValidator(args=self._val_args(yaml, BATCH, net.end2end), save_dir=self.workdir / "val")(model=copy.deepcopy(model))
        return float(stats[METRICS[self.metric]])

    def _val_args(self, yaml: str, batch: int, end2end: bool, **more) -> dict:
        # rect=False: every image letterboxed to the square input the exported file has, so the
        # torch model and its ONNX file are scored on identical inputs. nms=False is ultralytics'
        # switch to the one-to-one head and no NMS (what an end-to-end file ships); None: NMS.
        return dict(data=yaml, imgsz=self.imgsz, batch=batch, device="cpu", workers=0, plots=False, verbose=False, rect=False, save_json=False,
                    nms=False if end2end else None, **more)

    def score_file(self, blob: bytes, label: str) -> float:
        """The test-split score of an exported file (see :meth:`file_maps`)."""
        return self.file_maps(blob, label)[self.metric]

    def file_maps(self, blob: bytes, label: str) -> dict[str, float]:
        """mAP50 and mAP50-95 of an exported file on the test split, run by ultralytics' ONNX
        Runtime backend (the file gets the metadata ultralytics reads: stride, names, input size,
        and whether its output is end-to-end, told by its layout: ``[N, max_det, 6]``)."""
        import onnx
        from ultralytics.models.yolo.detect import DetectionValidator

        from edgeprune.exporters.onnx import with_metadata

        console.print(f"{label}: test {self.metric} of the file, run by onnxruntime through ultralytics' validator")
        path = self.workdir / "scored.onnx"
        dims = onnx.load_model_from_string(blob).graph.output[0].type.tensor_type.shape.dim
        end2end = len(dims) == 3 and dims[2].dim_value == 6  # dense: [N, 4 + classes, anchors], never 6 anchors
        meta = {"stride": "32", "task": "detect", "batch": "1", "channels": "3", "imgsz": str([self.imgsz, self.imgsz]), "names": repr(self.names),
                "end2end": str(end2end)}
        path.write_bytes(with_metadata(blob, meta))
        stats = DetectionValidator(args=self._val_args(self.test_yaml, 1, end2end, model=str(path)), save_dir=self.workdir / "val")()
        return {name: float(stats[key]) for name, key in METRICS.items()}

    def fine_tune(self, net: YoloNet, teacher: nn.Module, epochs: float, seed: int, description: str) -> dict:
        """ultralytics' trainer on the pruned module in place; the EMA weights are kept (what
        ultralytics itself validates and saves). ``teacher`` is unused: no distillation."""
        from ultralytics.models.yolo.detect import DetectionTrainer

        whole = max(1, math.ceil(epochs))
        self._tunes += 1
        console.print(f"{description}: ultralytics trainer, {epochs:g} epoch(s) at {self.imgsz} px")
        overrides = dict(
            model="yolov8n.yaml",  # never read: the trainer is handed the module below
            data=self.search_yaml, epochs=whole, fraction=min(1.0, epochs / whole), imgsz=self.imgsz, batch=BATCH,
            device="cpu", workers=0, amp=False, plots=False, val=False, save=False, seed=seed, deterministic=False,
            warmup_epochs=0, project=str(self.workdir / "train"), name=f"tune-{self._tunes}", exist_ok=True,
            pretrained=False, verbose=False,
        )
        with ultralytics_form(net) as model:
            trainer = DetectionTrainer(overrides=overrides)
            model.criterion = None  # a loss built for another width or device would be reused
            trainer.model = model
            trainer.train()
            model.load_state_dict(trainer.ema.ema.float().state_dict())
            model.criterion = None
            model.eval()
        for name, p in net.named_parameters():
            p.requires_grad_(".dfl" not in name)
        net.eval()
        return {"recipe": "ultralytics DetectionTrainer", "ultralytics_epochs": whole, "fraction": overrides["fraction"]}

    # --- what the prune job reports and writes ----------------------------------------------

    def describe(self) -> dict:
        return {"kind": "detection", "metric": self.metric, "spec": self.data_yaml, "name": "detection (ultralytics YOLO)",
                "test_split": True, "fine_tune": True, **({"checkpoint": self._checkpoint} if self._checkpoint else {})}

    def describe_data(self, seed: int) -> dict:
        return {"name": "yolo", "source": self.data_yaml, "seed": seed, "sizes": dict(self.sizes), "holdout_from": "train",
                "num_classes": self.num_classes, "class_names": list(self.names.values())}

    def extra_files(self, net: YoloNet) -> dict[str, tuple[str, bytes]]:
        """role → (file, bytes): the pruned detector as an ultralytics checkpoint. What loading it
        needs goes into :meth:`describe` (report.json's ``task.checkpoint``, the model card):
        ultralytics alone, or edgeprune too where a C2f's halves kept different widths."""
        blocks = edgeprune_blocks(net.model)
        self._checkpoint = {"file": "model.pt", "loads_with": ["ultralytics"] + (["edgeprune"] if blocks else []), "edgeprune_blocks": blocks}
        return {"ultralytics": ("model.pt", checkpoint_bytes(net, self.data_yaml, self.imgsz))}

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
