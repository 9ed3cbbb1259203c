import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.tasks import data
from edgeprune.tasks.data import Preprocess, Split, load_data, read_idx
from edgeprune.errors import UserError

HAVE_FASHION = all(
    (data.SYSTEM_FASHION_MNIST / f"{stem}.gz").is_file() for stem in data.FASHION_MNIST_FILES.values()
)


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def write_fake_fashion(folder, n_train=40, n_test=10, gz=True):
    """Four valid IDX files with recognisable content: image i is filled with value i."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x0803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, 0x0801)


# --- Fashion-MNIST ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    if not HAVE_FASHION:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return load_data("fashion-mnist", input_shape=(3, 32, 32), holdout=5000, seed=0)


def test_fashion_mnist_real_counts_and_labels(fashion):
    assert (len(fashion.train), len(fashion.holdout), len(fashion.test)) == (55000, 5000, 10000)
    assert fashion.train.images.dtype == torch.uint8
    assert tuple(fashion.train.images.shape[1:]) == (1, 28, 28)
    for split in (fashion.train, fashion.holdout, fashion.test):
        assert split.labels.dtype == torch.int64
        assert split.labels.min() == 0 and split.labels.max() == 9
    assert fashion.num_classes == 10 and fashion.class_names[0] == "T-shirt/top"
    described = fashion.describe()
    json.dumps(described)
    assert described["holdout_from"] == "train"
    assert described["sizes"] == {"train": 55000, "holdout": 5000, "test": 10000}
    assert described["source"] == str(data.SYSTEM_FASHION_MNIST)


def test_fashion_mnist_resized_to_rgb32(fashion):
    x, y = next(fashion.train.batches(64))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (64,)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert fashion.preprocess.to_dict()["grey_to_rgb"] is True


def test_fashion_mnist_from_env_folder_uncompressed(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "fashion-mnist", gz=False)
    monkeypatch.setenv("EDGEPRUNE_DATA", str(tmp_path))
    bundle = load_data("fashion-mnist", holdout=8, seed=3)
    assert (len(bundle.train), len(bundle.holdout), len(bundle.test)) == (32, 8, 10)
    # Holdout and train are disjoint and together are the whole training set (image i == i).
    values = sorted(bundle.train.images[:, 0, 0, 0].tolist() + bundle.holdout.images[:, 0, 0, 0].tolist())
    assert values == list(range(40))
    assert torch.equal(bundle.train.labels, bundle.train.images[:, 0, 0, 0].long() % 10)
    # Same seed, same holdout; another seed, another one.
    again = load_data("fashion-mnist", holdout=8, seed=3)
    other = load_data("fashion-mnist", holdout=8, seed=4)
    assert torch.equal(again.holdout.images, bundle.holdout.images)
    assert not torch.equal(other.holdout.images, bundle.holdout.images)


def test_fashion_mnist_partial_folder_is_an_error(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("EDGEPRUNE_DATA", str(tmp_path))
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_data("fashion-mnist")


def test_fashion_mnist_offline_without_copy_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPRUNE_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", NoNetwork)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*EDGEPRUNE_DATA"):
        load_data("fashion-mnist")


def test_idx_magic_and_truncation_checked(tmp_path):
    labels = tmp_path / "labels.gz"
    write_idx(labels, np.arange(5), 0x0801)
    assert read_idx(labels, 0x0801).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(labels, 0x0803)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(gzip.decompress(labels.read_bytes())[:-1])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_idx(truncated, 0x0801)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read"):
        read_idx(garbage, 0x0801)


# --- Preprocess ------------------------------------------------------------------------------


def test_preprocess_pad_centres_and_zero_fills():
    pre = Preprocess((1, 4, 4), (1, 8, 6), "pad")
    x = pre(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 8, 6)
    assert torch.equal(x[:, :, 2:6, 1:5], torch.ones(2, 1, 4, 4))
    assert x.sum() == 2 * 16
    assert pre.to_dict()["resize"] == "pad-centre"
    with pytest.raises(UserError, match="smaller than the images"):
        Preprocess((1, 28, 28), (1, 20, 20), "pad")


def test_preprocess_resize_uses_bilinear_antialias_and_mean_std():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    pre = Preprocess((1, 28, 28), (3, 14, 14), "resize", mean=(0.5,), std=(0.25,))
    expected = torch.nn.functional.interpolate(
        images.float() / 255, size=(14, 14), mode="bilinear", align_corners=False, antialias=True
    )
    assert torch.allclose(pre(images), ((expected - 0.5) / 0.25).expand(-1, 3, -1, -1), atol=1e-6)
    rgb = Preprocess((3, 2, 2), (3, 2, 2), mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    x = rgb(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]
    described = rgb.to_dict()
    assert described == {
        "native_shape": [3, 2, 2], "input_shape": [3, 2, 2], "scale": "1/255", "resize": "none",
        "antialias": False, "grey_to_rgb": False, "mean": [0.0, 0.5, 1.0], "std": [1.0, 0.5, 0.25],
        "layout": "NCHW",
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"native_shape": (3, 8, 8), "input_shape": (1, 8, 8)}, "has 1 channels but the images have 3"),
        ({"native_shape": (1, 8, 8), "input_shape": (3, 8, 8), "mean": (0.1, 0.2), "std": (1, 1)}, "1 or 3 values"),
        ({"native_shape": (1, 8, 8), "input_shape": (1, 8, 8), "mean": (0.1,), "std": (0.0,)}, "positive"),
        ({"native_shape": (1, 8, 8), "input_shape": (1, 8, 8), "mean": (0.1,)}, "pass both or neither"),
    ],
)
def test_preprocess_rejects_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        Preprocess(**kwargs)


def test_load_data_mean_std_and_pad_flags():
    bundle = load_data("digits", input_shape=(1, 12, 12), pad=True, mean=[0.5], std=[0.5])
    x, _ = next(bundle.test.batches(16))
    assert x.shape == (16, 1, 12, 12)
    assert torch.all(x[:, :, :2, :] == -1.0)  # zero padding, then normalised
    assert x.min() >= -1 and x.max() <= 1
    assert bundle.describe()["preprocess"]["resize"] == "pad-centre"


# --- Split -----------------------------------------------------------------------------------


def test_split_batches_shuffle_limit_and_subset():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10), Preprocess((1, 1, 1), (1, 1, 1)))
    assert [len(y) for _, y in split.batches(4)] == [4, 4, 2]
    assert torch.cat([y for _, y in split.batches(4)]).tolist() == list(range(10))
    shuffled = torch.cat([y for _, y in split.batches(3, shuffle=True, seed=1)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    limited = [y for _, y in split.batches(4, shuffle=True, seed=1, limit=6)]
    assert [len(y) for y in limited] == [4, 2]
    assert torch.cat(limited).tolist() == shuffled[:6].tolist()
    x, y = next(split.batches(10))
    assert torch.allclose(x.flatten() * 255, y.float())
    sub = split.subset(4, seed=2)
    assert len(sub) == 4 and torch.equal(sub.images.flatten().long(), sub.labels)
    assert torch.equal(split.subset(4, seed=2).labels, sub.labels)


# --- digits ----------------------------------------------------------------------------------


def test_digits_split_and_capped_holdout():
    bundle = load_data("digits", seed=0)
    total = len(bundle.train) + len(bundle.holdout) + len(bundle.test)
    assert total == 1797
    assert len(bundle.test) == 1797 - int(0.8 * 1797)
    assert bundle.holdout_capped and len(bundle.holdout) == (len(bundle.train) + len(bundle.holdout)) // 5
    assert tuple(bundle.train.images.shape[1:]) == (1, 8, 8)
    assert bundle.train.images.max() == 255
    small = load_data("digits", holdout=100, seed=0)
    assert len(small.holdout) == 100 and not small.holdout_capped
    assert small.class_names == [str(d) for d in range(10)]


def test_unknown_spec_and_bad_holdout():
    with pytest.raises(UserError, match="fashion-mnist, imagefolder:PATH, digits"):
        load_data("cifar10")
    with pytest.raises(UserError, match="at least 1"):
        load_data("digits", holdout=0)


# --- image folders ---------------------------------------------------------------------------


def make_folder(root, mode="RGB", sizes=((12, 10),), classes=("cat", "dog"), per_class=3, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / c / f"{i}.png")
    return root


def test_imagefolder_rgb_native_size(tmp_path):
    make_folder(tmp_path)
    bundle = load_data(f"imagefolder:{tmp_path}", holdout=2, seed=0)
    assert bundle.class_names == ["cat", "dog"] and bundle.num_classes == 2
    assert (len(bundle.train), len(bundle.holdout), len(bundle.test)) == (4, 2, 6)
    assert tuple(bundle.train.images.shape[1:]) == (3, 10, 12)
    assert bundle.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "val" / "cat" / "0.png"))
    assert torch.equal(bundle.test.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert bundle.describe()["preprocess"]["native_shape"] == [3, 10, 12]


def test_imagefolder_grey_mixed_sizes_resized_at_load(tmp_path):
    make_folder(tmp_path, mode="L", sizes=((12, 10), (20, 16)))
    bundle = load_data(f"imagefolder:{tmp_path}", input_shape=(3, 8, 8), holdout=1)
    assert tuple(bundle.train.images.shape[1:]) == (1, 8, 8)
    x, _ = next(bundle.test.batches(6))
    assert x.shape == (6, 3, 8, 8)
    described = bundle.preprocess.to_dict()
    assert described["resize"] == "bilinear" and described["native_shape"] is None
    assert described["grey_to_rgb"] is True
    with pytest.raises(UserError, match="different sizes"):
        load_data(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: None, "not found; pass imagefolder:PATH with PATH/train/CLASS"),
        (lambda root: make_folder(root, splits=("train",)), "has no val/ folder"),
        (lambda root: make_folder(root, per_class=0), "without images"),
        (lambda root: (make_folder(root), (root / "val" / "bird").mkdir()), "differ from val/ classes"),
        (lambda root: (make_folder(root), (root / "train" / "cat" / "x.png").write_bytes(b"no")), "cannot read image"),
    ],
)
def test_imagefolder_errors_name_path_and_layout(tmp_path, damage, message):
    root = tmp_path / "data"
    damage(root)
    with pytest.raises(UserError, match=message) as info:
        load_data(f"imagefolder:{root}")
    assert str(root) in str(info.value)


def test_an_unreadable_image_is_one_line_also_once_ultralytics_patched_pil(tmp_path):
    """ultralytics replaces PIL's Image.open when imported (a detection run, or any test before
    this one): on a file PIL cannot read, its version tries to import a HEIF plugin instead."""
    pytest.importorskip("ultralytics.utils.patches")  # importing it applies the patch
    root = tmp_path / "data"
    make_folder(root)
    (root / "train" / "cat" / "x.png").write_bytes(b"no")
    with pytest.raises(UserError, match="cannot read image"):
        load_data(f"imagefolder:{root}")


def test_imagefolder_empty_path():
    with pytest.raises(UserError, match="imagefolder: needs a path"):
        load_data("imagefolder:")
