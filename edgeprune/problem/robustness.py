"""Robust accuracy as an objective (CCSRP): PGD attacks, the shared adversarial set of a round,
and the adversary adversarial fine-tuning trains against.

Attacks come from the Adversarial Robustness Toolbox (``art``), run on the model *as the user
gives it*: images in [0, 1] pixel space, the data's normalisation applied inside the attacked
model (ART's differentiable ``preprocessing``), so ``eps`` means what the papers mean by
8/255. ART rather than torchattacks: torchattacks pins ``requests~=2.25``, which conflicts with
ultralytics and most of a user's environment.

Attacking every candidate of a search is out of the question on a CPU (a PGD-10 pass over 500
images costs about 14 s for MobileNetV2 at 32×32, where the clean score costs a fraction of
one), so candidates are scored on one *shared* adversarial set per round (CCSRP Algorithm 2):
``k`` sub-nets of the round's base network, each with ``ceil(n / k)`` random groups mutated by
the ratio-bounded bit flip that co-evolution also mutates with (``edgeprune.records``), each
attacked on the same sample of held-out images; the union is the set every candidate of the
round is scored on. Sub-nets rather than the base alone make the set transfer to the whole
neighbourhood of networks the search visits.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeprune.problem.attack import DEFAULT_SAMPLES, DEFAULT_SUBNETS, DEFAULT_TEST_SAMPLES, Attack, require_art
from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.records import P1, RATIO_BOUND, bounded_bit_flip
from edgeprune.tasks.training import correct_count

# Upper bounds of the shared set's settings (its size in memory and in the checkpoint follows).
MAX_SUBNETS, MAX_SAMPLES = 64, 100_000

@dataclass(frozen=True)
class Normalisation:
    """The data's ``(x - mean) / std``, so attacks work in pixel space and models get their input."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def of(cls, preprocess) -> "Normalisation":
        return cls(preprocess.mean, preprocess.std)

    def _stats(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(channels) if len(self.mean) == 1 else torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32).expand(channels) if len(self.std) == 1 else torch.tensor(self.std, dtype=torch.float32)
        return mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x.clamp(0, 1)
        mean, std = self._stats(x.shape[1])
        return (x * std + mean).clamp(0, 1)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return pixels
        mean, std = self._stats(pixels.shape[1])
        return (pixels - mean) / std

    def art_preprocessing(self, channels: int):
        if self.mean is None:
            return None
        mean, std = self._stats(channels)
        return mean.numpy(), std.numpy()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, norm: Normalisation, seed: int, num_classes: int) -> torch.Tensor:
    """Adversarial versions of the model inputs ``x`` (labels ``y``) against ``model``, returned
    as model inputs. Seeded: the random start draws from numpy's global generator and ART's
    loader from torch's; both are left as they were. Every module's train/eval flag is kept."""
    PGD, Classifier = require_art()
    modes = {m: m.training for m in model.modules()}
    classifier = Classifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=num_classes,
        clip_values=(0.0, 1.0), preprocessing=norm.art_preprocessing(x.shape[1]), device_type="cpu",
    )
    attacker = PGD(
        classifier, norm=np.inf, eps=attack.eps, eps_step=attack.alpha, max_iter=attack.steps,
        num_random_init=1, batch_size=max(1, min(len(x), 256)), verbose=False,
    )
    state = np.random.get_state()
    np.random.seed(seed % (1 << 32))
    try:
        with torch.random.fork_rng(devices=[]):  # ART's data loader draws from torch's generator too
            adv = attacker.generate(norm.to_pixels(x).numpy(), y=y.numpy())
    finally:
        np.random.set_state(state)
        for module, mode in modes.items():
            module.training = mode
    return norm.to_input(torch.from_numpy(adv))


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy on tensors (an adversarial set); the model's train/eval flag is kept."""
    batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
    return correct_count(model, batches) / max(1, len(y))


def robust_accuracy(model: nn.Module, split, attack: Attack, norm: Normalisation, samples: int, seed: int, num_classes: int) -> float:
    """Accuracy under a PGD attack on the model itself, over a seeded sample of ``split`` (the
    report's number: a white-box attack per model, unlike the search's shared set)."""
    sub = split.subset(min(samples, len(split)), seed=seed)
    # A list, not a generator: the attacks need gradients, which correct_count switches off.
    attacked = [(pgd(model, x, y, attack, norm, seed + i, num_classes), y) for i, (x, y) in enumerate(sub.batches(256))]
    return correct_count(model, attacked) / max(1, len(sub))


@dataclass
class AdversarialSet:
    """A round's shared adversarial examples (model inputs) and their true labels."""

    x: torch.Tensor
    y: torch.Tensor
    settings: dict  # attack, sub-nets, samples, seed: what the set was made with

    name = "robustness"

    def measure(self, model: nn.Module) -> float:
        """Robust accuracy of ``model`` on the set (a :class:`edgeprune.problem.pruning.ModelScore`)."""
        return accuracy_on(model, self.x, self.y)

    def describe(self) -> dict:
        return {"images": len(self.y), **self.settings}

    def save(self, path: Path) -> None:
        """``.npz`` of plain arrays (never a pickle), written atomically beside the round's journal."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, x=self.x.numpy(), y=self.y.numpy(), settings=np.frombuffer(json.dumps(self.settings).encode(), dtype=np.uint8))
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, settings: dict, shape: tuple[int, ...], num_classes: int | None = None) -> "AdversarialSet | None":
        """The set saved at ``path`` when it was made with exactly ``settings`` for inputs of
        ``shape`` (and labels below ``num_classes``); None when there is none or it does not
        match. Arrays are read with ``allow_pickle=False`` and checked for shape, dtype and size.
        Something else at ``path`` (a folder, a device) is refused: the new set could not replace it."""
        if path.is_symlink() or not path.exists():
            return None
        if not path.is_file():
            raise UserError(f"{path} is not a file (an adversarial set edgeprune wrote is one); delete it and resume")
        images = settings["subnets"] * settings["samples"]
        expected = images * 4 * math.prod(shape) + images * 8 + (1 << 20)  # x, y and the settings
        try:
            with zipfile.ZipFile(path) as archive:
                if sum(i.file_size for i in archive.infolist()) > expected:
                    raise ValueError(f"it unpacks to more than the {expected >> 20} MiB its settings imply")
            with np.load(path, allow_pickle=False) as arrays:
                if not isinstance(arrays, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                stored = json.loads(bytes(arrays["settings"]).decode())
                if stored != settings:
                    return None
                x, y = arrays["x"], arrays["y"]
        except Exception as exc:  # a crafted file fails in many ways; each is "not ours"
            raise UserError(f"{path} is not an adversarial set edgeprune wrote ({type(exc).__name__}); delete it and resume") from None
        if (x.dtype != np.float32 or y.dtype != np.int64 or x.shape != (images, *shape) or y.shape != (images,)
                or not np.isfinite(x).all() or (y < 0).any()):
            raise UserError(f"{path} holds arrays of the wrong shape, type or values for {images} inputs of {list(shape)}; delete it and resume")
        if num_classes is not None and images and int(y.max()) >= num_classes:
            raise UserError(f"{path} holds label {int(y.max())}, but the data has {num_classes} classes (0 to {num_classes - 1}); delete it and resume")
        return cls(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()), settings)


def subnet_choice(space, rng: np.random.Generator, layers: int) -> tuple[tuple[int, ...], ...]:
    """A sub-net of the base network (CCSRP Algorithm 2, lines 3-4): ``layers`` random groups
    mutated by the ratio-bounded bit flip at rate p1 (a group keeps at least one channel). Depth
    genes (one bit, which a 10 % bound never flips) are not drawn."""
    choice = list(space.full_choice())
    channels = [i for i, g in enumerate(space.groups) if not g.depth]
    for gi in rng.choice(channels, size=min(layers, len(channels)), replace=False):
        live = np.array(choice[gi])
        bits = bounded_bit_flip(np.ones(len(live), dtype=bool), P1, RATIO_BOUND, rng)
        if bits.any():
            choice[gi] = tuple(int(c) for c in live[bits])
    return tuple(choice)


def shared_set(space, calibrate, x: torch.Tensor, y: torch.Tensor, attack: Attack, norm: Normalisation,
               subnets: int, seed: int, num_classes: int, progress=None) -> AdversarialSet:
    """CCSRP Algorithm 2 on ``space``'s base network: ``subnets`` mutated sub-nets (BN statistics
    re-estimated by ``calibrate``, as every candidate's are), each attacked on ``(x, y)``."""
    rng = np.random.default_rng(seed)
    per = math.ceil(sum(not g.depth for g in space.groups) / subnets)
    xs, ys = [], []
    for i in range(subnets):
        sub = calibrate(space.shrink(space.plan_of(subnet_choice(space, rng, per))))
        xs.append(pgd(sub, x, y, attack, norm, seed + 7919 * (i + 1), num_classes))
        ys.append(y)
        if progress is not None:
            progress(i + 1)
    settings = {"attack": asdict(attack), "subnets": subnets, "samples": len(y), "seed": seed}
    return AdversarialSet(torch.cat(xs).contiguous(), torch.cat(ys).contiguous(), settings)


@dataclass
class RobustPruning:
    """What a prune job with a robustness objective or adversarial fine-tuning needs: the attack,
    the shared set's size, and the data the sets and the report's numbers are drawn from."""

    attack: Attack
    data: object  # edgeprune.tasks.data.DataBundle
    subnets: int = DEFAULT_SUBNETS
    samples: int = DEFAULT_SAMPLES
    test_samples: int = DEFAULT_TEST_SAMPLES
    seed: int = 0
    progress: bool = True

    @property
    def norm(self) -> Normalisation:
        return Normalisation.of(self.data.preprocess)

    def adversary(self):
        """``(model, x, y, seed) -> x_adv``: what adversarial fine-tuning trains against."""
        return lambda model, x, y, seed: pgd(model, x, y, self.attack, self.norm, seed, self.data.num_classes)

    def _settings(self, number: int) -> dict:
        return {"attack": asdict(self.attack), "subnets": self.subnets, "samples": min(self.samples, len(self.data.holdout)), "seed": self.seed + 1000 * number}

    def round_set(self, number: int, space, calibrate, folder: Path | None, reuse: bool = True) -> AdversarialSet:
        """Round ``number``'s shared set: the one saved in ``folder`` when it was made with the
        same settings (a resumed run) and ``reuse``, else made now (and saved there)."""
        from edgeprune.progress import console, progress_bar

        settings = self._settings(number)
        path = None if folder is None else Path(folder) / "adversarial.npz"
        found = AdversarialSet.load(path, settings, tuple(space.input_shape), self.data.num_classes) if path is not None and reuse else None
        if found is not None:
            console.print(f"round {number}: reusing the shared adversarial set of the checkpoint ({len(found.y)} images)")
            return found
        # Ds: held-out images (carved from train, like the clean score's), one seeded sample for every round.
        x, y = next(self.data.holdout.subset(settings["samples"], seed=self.seed + 1).batches(settings["samples"]))
        with progress_bar(self.progress) as bar:
            task = bar.add_task(f"shared adversarial set (PGD-{self.attack.steps} on {self.subnets} sub-nets)", total=self.subnets, status="")
            made = shared_set(space, calibrate, x, y, self.attack, self.norm, self.subnets, settings["seed"], self.data.num_classes,
                              progress=lambda i: bar.update(task, completed=i))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.save(path)
        return made

    def test_accuracy(self, model: nn.Module) -> float:
        """Accuracy under PGD on the model itself over ``test_samples`` test images (the report's)."""
        return robust_accuracy(model, self.data.test, self.attack, self.norm, self.test_samples, self.seed, self.data.num_classes)

    def describe(self, shared: bool = True) -> dict:
        """The report's section; ``shared`` when the search made shared sets (the objective)."""
        return {
            "attack": self.attack.describe(),
            **({"shared_set": {"subnets": self.subnets, "samples": min(self.samples, len(self.data.holdout)), "from": "holdout",
                               "mutation": {"p1": P1, "ratio_bound": RATIO_BOUND}}} if shared else {}),
            "test_samples": min(self.test_samples, len(self.data.test)),
        }
