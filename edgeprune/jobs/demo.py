"""`edgeprune demo` and `edgeprune train`: a trained model to prune when the user has none yet.

The demo trains torchvision's mobilenet_v2 on Fashion-MNIST (3×32×32, half an epoch) once, keeps
the state_dict in the cache folder, and prunes it to half its measured latency on ``x86-cpu``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from edgeprune.tasks.data import load_data
from edgeprune.jobs.settings import OutputSettings, PruneConfig, RecipeSettings, SearchSettings, TaskSettings
from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.tasks.models import check_input, load_model
from edgeprune.profiling.cache import default_cache_path
from edgeprune.progress import console
from edgeprune.tasks.training import evaluate, train
from edgeprune.tasks.transfer import freeze_backbone as freeze_backbone_of

DEMO_MODEL = "torchvision:mobilenet_v2"
DEMO_SHAPE = (3, 32, 32)
DEMO_EPOCHS = 0.5
# The demo's job, sized so that training, search and export finish within 8 minutes on a 2-core
# VM (docs/benchmarks.md has the measured wall times; half an epoch of training takes about 2 min
# there, and one search evaluation of this model 5-11 s depending on the VM): a small population
# that stops when the front settles, a 1000-image holdout for the proxy (it only ranks
# candidates; the short tune re-ranks the shortlist), two short tunes, no widening (it measures
# every group once more and re-confirms: about a minute here), half an epoch of final
# distillation (on the pruned network, about 1.2 min).
DEMO_SEARCH = SearchSettings(population=8, generations=3, patience=2)
DEMO_RECIPE = RecipeSettings(refine_top=2, refine_epochs=0.05, widen_passes=0, finetune_epochs=0.5)
DEMO_HOLDOUT = 1000


def train_and_save(
    spec: str,
    *,
    data: str,
    input_shape: tuple[int, int, int] | None,
    out: str | os.PathLike,
    pad: bool = False,
    mean=None,
    std=None,
    holdout: int = 5000,
    num_classes: int | None = None,
    weights: str | None = None,
    epochs: float = 1.0,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
    freeze_backbone: bool = False,
) -> dict:
    """Train ``spec`` on the train split (holdout excluded) and save its state_dict atomically;
    with ``freeze_backbone``, only a fresh head (:func:`edgeprune.tasks.transfer.freeze_backbone`)."""
    torch.manual_seed(seed)
    bundle = load_data(data, input_shape=input_shape, pad=pad, mean=mean, std=std, holdout=holdout, seed=seed)
    model, _ = load_model(spec, num_classes=num_classes or bundle.num_classes, weights=weights)
    check_input(model, tuple(bundle.preprocess.input_shape), bundle.num_classes)
    if freeze_backbone:
        if weights is None:
            raise UserError("--freeze-backbone trains a new head on a trained backbone: pass the backbone's --weights")
        try:
            head = freeze_backbone_of(model)
        except ValueError as exc:
            raise UserError(f"--freeze-backbone: {exc}; use a model with a fully-connected head") from None
        console.print(f"backbone frozen; training a new head of {len(head)} fully-connected layer(s)")
    stats = train(model, bundle.train, epochs, lr=lr, seed=seed, progress=progress, description=f"train {spec}")
    accuracy = evaluate(model, bundle.test)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(out, buffer.getvalue())
    console.print(f"trained {spec} for {epochs:g} epoch(s): test accuracy {accuracy:.2%}; state_dict in {out}")
    return stats | {"test_accuracy": accuracy}


def demo_weights(seed: int = 0, progress: bool = True) -> Path:
    """The demo model's trained state_dict, trained on first use and reused afterwards."""
    shape = "x".join(map(str, DEMO_SHAPE))
    path = default_cache_path().parent / "demo" / f"mobilenet_v2-fashion-mnist-{shape}-e{DEMO_EPOCHS:g}-s{seed}.pt"
    if path.exists():
        console.print(f"reusing the demo model trained earlier: {path}")
    else:
        console.print(f"training the demo model once ({DEMO_MODEL}, Fashion-MNIST {shape}, {DEMO_EPOCHS:g} epoch)")
        train_and_save(DEMO_MODEL, data="fashion-mnist", input_shape=DEMO_SHAPE, out=path, epochs=DEMO_EPOCHS, seed=seed, progress=progress)
    return path


def run_demo(out: str, seed: int = 0, cache: str | None = None, no_cache: bool = False, progress: bool = True) -> dict:
    from edgeprune.jobs.prune import run_prune

    weights = demo_weights(seed, progress)
    return run_prune(
        PruneConfig(
            model=DEMO_MODEL,
            weights=str(weights),
            target="x86-cpu",
            speedup=2.0,
            seed=seed,
            task=TaskSettings(data="fashion-mnist", input_shape=DEMO_SHAPE, num_classes=10, holdout=DEMO_HOLDOUT),
            search=DEMO_SEARCH,
            recipe=DEMO_RECIPE,
            output=OutputSettings(out=out, cache=cache, no_cache=no_cache, progress=progress),
        )
    )
