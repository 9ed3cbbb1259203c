"""Datasets as three splits of uint8 tensors plus the exact preprocessing the firmware must repeat.

Images stay uint8 at their stored size (4x smaller than float32) and are turned into model input
one batch at a time by a :class:`Preprocess`. That object is also the contract handed to firmware
teams (``Preprocess.to_dict``): whatever the model saw during search and fine-tuning is what the
device has to feed it, so the two must never be described separately.

Every bundle has a *holdout* split carved out of TRAIN. Candidate models are scored on it during
the search; the test split is only touched for the final numbers, so reported accuracy is not
inflated by picking the candidate that happened to do best on the test set.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeprune.errors import UserError

SPECS = ("fashion-mnist", "imagefolder:PATH", "digits")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Where Debian's dataset-fashion-mnist package puts the files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# PIL modes that carry no colour; a folder made only of these is kept single-channel.
_GREY_MODES = {"1", "L", "LA"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
_IMAGEFOLDER_LAYOUT = "PATH/train/CLASS/*.png and PATH/val/CLASS/*.png (torchvision ImageFolder)"


def format_shape(shape: tuple[int, ...]) -> str:
    """``(3, 32, 32)`` -> ``"3x32x32"``, the same spelling the CLI accepts back."""
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class Preprocess:
    """uint8 images at ``native_shape`` -> float32 model input at ``input_shape``.

    Steps, in this order: scale by 1/255; resize or centre-pad to the input height and width;
    replicate a grey channel to three; normalise with ``mean``/``std`` (per input channel, or one
    value for all). Invalid combinations are rejected at construction so that ``load_data`` fails
    before any time is spent, not in the middle of a search.

    ``resized_at_load`` records that the stored images were already resized (bilinearly) when they
    were read, because their source sizes varied; firmware then has to resize whatever arrives.
    """

    native_shape: tuple[int, int, int]
    input_shape: tuple[int, int, int]
    resize_mode: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resized_at_load: bool = False

    def __post_init__(self) -> None:
        native_c, native_h, native_w = self.native_shape
        in_c, in_h, in_w = self.input_shape
        if self.resize_mode not in ("none", "resize", "pad"):
            raise ValueError(f"resize_mode must be none, resize or pad, not {self.resize_mode!r}")
        if in_c != native_c and not (native_c == 1 and in_c == 3):
            raise UserError(
                f"input shape {format_shape(self.input_shape)} has {in_c} channels but the images "
                f"have {native_c}; pass --input-shape {native_c}x{in_h}x{in_w}"
                + (" or 3xHxW to replicate grey to RGB" if native_c == 1 else "")
            )
        if (in_h, in_w) != (native_h, native_w):
            if self.resize_mode == "none":
                raise ValueError("resize_mode 'none' needs input and native sizes to match")
            if self.resize_mode == "pad" and (in_h < native_h or in_w < native_w):
                raise UserError(
                    f"input shape {format_shape(self.input_shape)} is smaller than the images "
                    f"({native_h}x{native_w}) and padding cannot shrink them; pass an --input-shape "
                    f"of at least {in_c}x{native_h}x{native_w} or drop --pad to resize instead"
                )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, in_c):
                raise UserError(
                    f"--{name} has {len(values)} values but the input has {in_c} channels; "
                    f"pass 1 or {in_c} values"
                )
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserError(f"--std {list(self.std)} has a value <= 0; pass positive values")
        if (self.mean is None) != (self.std is None):
            raise UserError("--mean and --std go together; pass both or neither")

    def __call__(self, images: Tensor) -> Tensor:
        """Map a uint8 batch ``[N, *native_shape]`` to a float32 batch ``[N, *input_shape]``."""
        if tuple(images.shape[1:]) != self.native_shape:
            raise ValueError(
                f"expected images of shape [N, {format_shape(self.native_shape)}], "
                f"got {list(images.shape)}"
            )
        x = images.to(torch.float32) / 255.0
        _, native_h, native_w = self.native_shape
        in_c, in_h, in_w = self.input_shape
        if (in_h, in_w) != (native_h, native_w):
            if self.resize_mode == "resize":
                downscale = in_h < native_h or in_w < native_w
                x = F.interpolate(
                    x, size=(in_h, in_w), mode="bilinear", align_corners=False, antialias=downscale
                )
            else:
                top, left = (in_h - native_h) // 2, (in_w - native_w) // 2
                x = F.pad(x, (left, in_w - native_w - left, top, in_h - native_h - top))
        if x.shape[1] != in_c:
            x = x.expand(-1, in_c, -1, -1)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def to_dict(self) -> dict:
        """What the device must do to a raw uint8 NCHW frame, as JSON for the manifest.

        ``native_shape`` is null when images of varying size were resized at load: the firmware
        resizes whatever it receives. ``antialias`` means a low-pass filter when downscaling
        (PIL's bilinear and torch's ``antialias=True`` both do this).
        """
        if self.resized_at_load or self.resize_mode == "resize":
            resize = "bilinear"
        elif self.resize_mode == "pad" and self.native_shape[1:] != self.input_shape[1:]:
            resize = "pad-centre"
        else:
            resize = "none"
        return {
            "native_shape": None if self.resized_at_load else list(self.native_shape),
            "input_shape": list(self.input_shape),
            "scale": "1/255",
            "resize": resize,
            "antialias": resize == "bilinear",
            "grey_to_rgb": self.native_shape[0] == 1 and self.input_shape[0] == 3,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "layout": "NCHW",
        }


@dataclass
class Split:
    """One split kept as uint8 at native size; batches are preprocessed only when drawn."""

    images: Tensor
    labels: Tensor
    preprocess: Preprocess

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(float input, int64 labels)`` batches.

        ``limit`` caps the number of *items* (not batches); with ``shuffle`` they are a seeded
        random sample, so BN calibration and scoring can use a cheap but unbiased slice.
        """
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        end = n if limit is None else min(n, limit)
        for start in range(0, end, batch_size):
            stop = min(start + batch_size, end)
            idx = slice(start, stop) if order is None else order[start:stop]
            yield self.preprocess(self.images[idx]), self.labels[idx]

    def subset(self, n: int, seed: int = 0) -> Split:
        """A Split of ``n`` seeded random items (all of them, reordered, if ``n >= len``)."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.images[idx], self.labels[idx], self.preprocess)


@dataclass
class DataBundle:
    """train: fitting, fine-tuning, BN calibration. holdout: candidate scoring (carved from
    train). test: final accuracy only (the test set, or ``val/`` of an image folder)."""

    name: str
    train: Split
    holdout: Split
    test: Split
    num_classes: int
    class_names: list[str]
    preprocess: Preprocess
    source: str = ""
    seed: int = 0
    holdout_capped: bool = False

    def describe(self) -> dict:
        """The dataset section of report.json."""
        return {
            "name": self.name,
            "source": self.source,
            "sizes": {"train": len(self.train), "holdout": len(self.holdout), "test": len(self.test)},
            "holdout_from": "train",
            "holdout_capped": self.holdout_capped,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
        }


def load_data(
    spec: str,
    input_shape: tuple[int, int, int] | None = None,
    pad: bool = False,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    holdout: int = 5000,
    seed: int = 0,
) -> DataBundle:
    """Load ``fashion-mnist``, ``imagefolder:PATH`` or ``digits`` into a :class:`DataBundle`;
    ``SPEC@0-4`` (or ``@5,7,9``) keeps only those classes, relabelled 0, 1, ... in that order (a
    source and a target task for transfer learning from one data set).

    ``input_shape`` None means the images' own shape. When it differs in size the images are
    resized bilinearly, or zero-padded around the centre with ``pad``. ``holdout`` items are
    drawn at random (seeded) from train and removed from it. A holdout of half the training set
    or more is capped to 20 % of it: the default of 5000 suits 60k-image sets and would
    otherwise swallow a small one (``digits`` has 1437 training images); ``describe()`` reports
    the size used and ``holdout_capped``.
    """
    if holdout < 1:
        raise UserError(f"--holdout {holdout} must be at least 1; pass the number of train images to score on")
    gen = torch.Generator().manual_seed(seed)
    base, at, subset = spec.rpartition("@")
    folder_path = spec.startswith("imagefolder:") and not re.fullmatch(r"[\d,\-\s]+", subset)
    if not at or folder_path:  # no class list, or the '@' belongs to a folder's path
        base, subset = spec, ""
    source, (train_x, train_y, test_x, test_y), class_names, resized_at_load = _load_source(
        base, input_shape, pad, gen
    )
    if subset:
        kept = parse_classes(subset, len(class_names))
        train_x, train_y = _only(train_x, train_y, kept, len(class_names))
        test_x, test_y = _only(test_x, test_y, kept, len(class_names))
        class_names = [class_names[c] for c in kept]
    preprocess = _preprocess(tuple(train_x.shape[1:]), input_shape, pad, mean, std, resized_at_load)
    capped, hold_idx, train_idx = _holdout_indices(len(train_y), holdout, gen)
    return DataBundle(
        name=base.split(":", 1)[0] + (f"@{subset}" if subset else ""),
        train=Split(train_x[train_idx], train_y[train_idx], preprocess),
        holdout=Split(train_x[hold_idx], train_y[hold_idx], preprocess),
        test=Split(test_x, test_y, preprocess),
        num_classes=len(class_names),
        class_names=class_names,
        preprocess=preprocess,
        source=str(source),
        seed=seed,
        holdout_capped=capped,
    )


def parse_classes(text: str, count: int) -> list[int]:
    """``0-4`` or ``5,7,9``: the classes of a ``SPEC@CLASSES`` data set, in the order given
    (they become labels 0, 1, ...)."""
    try:
        if "-" in text and "," not in text:
            low, high = (int(v) for v in text.split("-"))
            kept = list(range(low, high + 1))
        else:
            kept = [int(v) for v in text.split(",")]
    except ValueError:
        kept = []
    if len(kept) < 2 or len(set(kept)) != len(kept) or not all(0 <= c < count for c in kept):
        raise UserError(f"classes {text!r} must be a range like 0-4 or a list like 5,7,9 of at least two distinct labels below {count}")
    return kept


def _only(x: Tensor, y: Tensor, kept: list[int], count: int) -> tuple[Tensor, Tensor]:
    """The items of the ``kept`` classes (of ``count``), relabelled by their position in ``kept``."""
    relabel = torch.full((count,), -1, dtype=torch.long)
    relabel[torch.tensor(kept)] = torch.arange(len(kept))
    mask = relabel[y] >= 0
    return x[mask], relabel[y[mask]]


def _load_source(
    spec: str, input_shape: tuple[int, int, int] | None, pad: bool, gen: torch.Generator
) -> tuple[str | Path, tuple[Tensor, Tensor, Tensor, Tensor], list[str], bool]:
    """(source, (train_x, train_y, test_x, test_y), class names, resized at load) for ``spec``."""
    if spec == "fashion-mnist":
        source, tensors = _load_fashion_mnist()
        return source, tensors, list(FASHION_MNIST_CLASSES), False
    if spec == "digits":
        source, tensors = _load_digits(gen)
        return source, tensors, [str(d) for d in range(10)], False
    if spec.startswith("imagefolder:"):
        source = spec.removeprefix("imagefolder:")
        if not source:
            raise UserError(f"imagefolder: needs a path; pass imagefolder:PATH with {_IMAGEFOLDER_LAYOUT}")
        train_x, train_y, test_x, test_y, class_names, resized_at_load = _load_imagefolder(
            Path(source), input_shape, pad
        )
        return source, (train_x, train_y, test_x, test_y), class_names, resized_at_load
    raise UserError(f"unknown dataset {spec!r}; pass --data as one of: {', '.join(SPECS)}")


def _preprocess(
    native_shape: tuple[int, ...],
    input_shape: tuple[int, int, int] | None,
    pad: bool,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    resized_at_load: bool,
) -> Preprocess:
    """What turns the loaded images into model input; ``input_shape`` None keeps the native one."""
    input_shape = native_shape if input_shape is None else tuple(input_shape)
    same_size = input_shape[1:] == native_shape[1:]
    return Preprocess(
        native_shape=native_shape,
        input_shape=input_shape,
        resize_mode="none" if same_size else ("pad" if pad else "resize"),
        mean=None if mean is None else tuple(float(m) for m in mean),
        std=None if std is None else tuple(float(s) for s in std),
        resized_at_load=resized_at_load,
    )


def _holdout_indices(n_train: int, holdout: int, gen: torch.Generator) -> tuple[bool, Tensor, Tensor]:
    """(capped, holdout indices, remaining train indices), both sorted, from one seeded permutation.

    A holdout of half the training set or more is capped to 20 % of it (see :func:`load_data`).
    """
    capped = holdout >= n_train / 2
    n_holdout = max(1, n_train // 5) if capped else holdout
    perm = torch.randperm(n_train, generator=gen)
    return capped, perm[:n_holdout].sort().values, perm[n_holdout:].sort().values


# --- Fashion-MNIST ---------------------------------------------------------------------------


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) and check its magic number and length.

    IDX is a 4-byte big-endian magic (0x0801 labels, 0x0803 images) followed by one 4-byte
    big-endian size per dimension and the raw uint8 data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}); re-download it or point EDGEPRUNE_DATA elsewhere") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise UserError(
            f"{path} is not an IDX file with magic 0x{magic:08x}; re-download it or point "
            "EDGEPRUNE_DATA elsewhere"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != math.prod(dims):
        raise UserError(
            f"{path} is truncated or corrupt ({len(raw) - header} data bytes for shape {dims}); "
            "re-download it or point EDGEPRUNE_DATA elsewhere"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (``.gz`` or not); None if it has none of them."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
    if not found:
        return None
    missing = [FASHION_MNIST_FILES[k] for k in FASHION_MNIST_FILES if k not in found]
    if missing:
        raise UserError(
            f"{folder} holds only part of Fashion-MNIST (missing {', '.join(missing)}); "
            "add the missing files or remove the folder from EDGEPRUNE_DATA"
        )
    return found


def _fashion_mnist_folders() -> list[Path]:
    """Where to look, in order: the user's choice, the Debian package, our own download cache."""
    folders = []
    if os.environ.get("EDGEPRUNE_DATA"):
        root = Path(os.environ["EDGEPRUNE_DATA"])
        folders += [root, root / "fashion-mnist"]
    folders.append(SYSTEM_FASHION_MNIST)
    folders.append(_download_root() / "FashionMNIST" / "raw")
    return folders


def _download_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgeprune")) / "data"


def _load_fashion_mnist() -> tuple[Path, tuple[Tensor, Tensor, Tensor, Tensor]]:
    for folder in _fashion_mnist_folders():
        files = _find_idx_files(folder)
        if files is not None:
            break
    else:
        files = _download_fashion_mnist()
        folder = files["train_images"].parent
    train_x = read_idx(files["train_images"], 0x0803)
    train_y = read_idx(files["train_labels"], 0x0801)
    test_x = read_idx(files["test_images"], 0x0803)
    test_y = read_idx(files["test_labels"], 0x0801)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise UserError(f"Fashion-MNIST in {folder} has image and label counts that differ; re-download it")
    return folder, (
        torch.from_numpy(train_x.copy()).unsqueeze(1),
        torch.from_numpy(train_y.astype(np.int64)),
        torch.from_numpy(test_x.copy()).unsqueeze(1),
        torch.from_numpy(test_y.astype(np.int64)),
    )


def _download_fashion_mnist() -> dict[str, Path]:
    """Last resort when no local copy exists; offline machines get a fix they can act on."""
    from torchvision.datasets import FashionMNIST

    root = _download_root()
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # network errors come as many types; all mean "no copy available"
        raise UserError(
            f"Fashion-MNIST not found locally and the download failed ({str(exc).splitlines()[0]}); "
            "run `apt-get install dataset-fashion-mnist` or set EDGEPRUNE_DATA to a folder "
            "holding the four IDX files"
        ) from exc
    files = _find_idx_files(root / "FashionMNIST" / "raw")
    assert files is not None, "torchvision reported success but wrote no IDX files"
    return files


# --- digits ----------------------------------------------------------------------------------


def _load_digits(gen: torch.Generator) -> tuple[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """scikit-learn's bundled 8x8 digits: small and real, so tests can train without downloads.

    Pixels are 0..16 there; they are scaled to 0..255 so the usual 1/255 preprocessing applies.
    There is no official test split: a seeded 80/20 split is made here.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UserError("--data digits needs scikit-learn; run `pip install scikit-learn`") from exc
    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.data * (255 / 16)).astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(labels), generator=gen)
    n_train = int(0.8 * len(labels))
    train_idx, test_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
    return "sklearn.datasets.load_digits", (
        images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    )


# --- image folders ---------------------------------------------------------------------------


def _scan_folder(root: Path) -> dict[str, list[Path]]:
    """class name -> sorted image files below ``root/CLASS`` (searched recursively)."""
    return {
        d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def _load_imagefolder(
    root: Path, input_shape: tuple[int, int, int] | None, pad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str], bool]:
    """Read every image into memory as uint8.

    Images are converted to RGB, or to L when every one is greyscale (a grey model stays
    single-channel). With an ``input_shape`` (and no ``pad``) they are resized bilinearly as they
    are read, so memory holds the model's size rather than the camera's. Without one, they must
    all share a size, which becomes the native shape.
    """
    train, val = _scan_imagefolder(root)
    headers = _read_headers([*train.values(), *val.values()])
    grey = all(mode in _GREY_MODES for mode, _ in headers.values())
    sizes = {size for _, size in headers.values()}
    resize_to = None if input_shape is None or pad else (input_shape[2], input_shape[1])
    if resize_to is None and len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
        raise UserError(
            f"images in {root} have different sizes (WxH {examples}, ...); pass --input-shape "
            "CxHxW (without --pad) to resize them as they are loaded"
        )
    train_x, train_y = _read_images(train, grey, resize_to)
    test_x, test_y = _read_images(val, grey, resize_to)
    resized_at_load = resize_to is not None and sizes != {resize_to}
    return train_x, train_y, test_x, test_y, list(train), resized_at_load


def _scan_imagefolder(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The train/ and val/ class folders of ``root``, checked for layout before any image is read."""
    if not root.is_dir():
        raise UserError(f"image folder {root} not found; pass imagefolder:PATH with {_IMAGEFOLDER_LAYOUT}")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise UserError(f"{root} has no {sub}/ folder; lay it out as {_IMAGEFOLDER_LAYOUT}")
    train, val = _scan_folder(root / "train"), _scan_folder(root / "val")
    if not train:
        raise UserError(f"{root / 'train'} has no class folders; lay it out as {_IMAGEFOLDER_LAYOUT}")
    if list(train) != list(val):
        raise UserError(
            f"{root}: train/ classes {list(train)} differ from val/ classes {list(val)}; "
            "give both the same class folders"
        )
    for sub, classes in (("train", train), ("val", val)):
        empty = [c for c, files in classes.items() if not files]
        if empty:
            raise UserError(
                f"{root / sub} has class folders without images ({', '.join(empty)}); add images "
                f"({', '.join(sorted(_IMAGE_SUFFIXES))}) or remove the folders"
            )
    return train, val


def _read_headers(file_lists: list[list[Path]]) -> dict[Path, tuple[str, tuple[int, int]]]:
    """path -> (mode, size) from each image's header: enough to choose grey or RGB and to check
    sizes before any pixels are decoded, and an unreadable file fails here, with its path."""
    from PIL import Image, UnidentifiedImageError

    headers = {}
    for files in file_lists:
        for path in files:
            try:
                with Image.open(path) as img:
                    headers[path] = (img.mode, img.size)
            except (UnidentifiedImageError, OSError, ImportError) as exc:
                # ImportError: once ultralytics is imported (--task detection, or the same Python
                # process), its patched Image.open tries a HEIF plugin on a file PIL cannot read.
                raise UserError(f"cannot read image {path} ({exc}); fix or remove it") from exc
    return headers


def _read_images(
    classes: dict[str, list[Path]], grey: bool, resize_to: tuple[int, int] | None
) -> tuple[Tensor, Tensor]:
    """(N x C x H x W uint8 images, labels) with labels numbering the classes in order."""
    from PIL import Image

    arrays, labels = [], []
    for label, files in enumerate(classes.values()):
        for path in files:
            with Image.open(path) as img:
                img = img.convert("L" if grey else "RGB")
                if resize_to is not None and img.size != resize_to:
                    img = img.resize(resize_to, Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8))
            labels.append(label)
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if grey else x.permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)
