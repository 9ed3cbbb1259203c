"""edgeprune from Python: train a small CNN, prune it for a CPU target with your own DataLoader and
evaluation function, then load the delivered files and run them.

    python examples/python_api.py OUT_DIR          # about 2 minutes on 2 cores

Everything the command line needs as a ``package.module:factory`` string is a plain object here:
the model is an ``nn.Module``, the calibration batches come from a ``DataLoader``, the score is a
function ``score(model) -> [0, 1]``, and the fine-tune is a function of your own. The images are
Fashion-MNIST, read with edgeprune's loader for brevity (Debian's ``dataset-fashion-mnist``);
your script would read its own data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import edgeprune


def make_model() -> nn.Module:
    """Three conv blocks and a linear head: wide enough that removing channels pays on a CPU."""

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(block(1, 32, 1), block(32, 64, 2), block(64, 128, 2), block(128, 128, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def fashion_mnist(seed: int = 0) -> dict[str, TensorDataset]:
    """train / holdout (the search's score) / test (the report's), as float images in [0, 1]."""
    from edgeprune.tasks.data import load_data

    data = load_data("fashion-mnist", holdout=1, seed=seed)
    order = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(seed))
    images, labels = data.train.images.float() / 255.0, data.train.labels
    train, holdout = order[:12000], order[12000:14000]
    return {
        "train": TensorDataset(images[train], labels[train]),
        "holdout": TensorDataset(images[holdout], labels[holdout]),
        "test": TensorDataset(data.test.images.float() / 255.0, data.test.labels),
    }


def train(model: nn.Module, loader: DataLoader, epochs: float, teacher: nn.Module | None = None, lr: float = 0.05) -> dict:
    """SGD over ``epochs`` passes of ``loader`` (fractions allowed); with a teacher, half the loss is
    distillation at temperature 4."""
    steps = max(1, round(epochs * len(loader)))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    done, loss = 0, torch.tensor(0.0)
    while done < steps:
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher.eval()(x) / 4.0, dim=1)
                loss = 0.5 * loss + 8.0 * F.kl_div(F.log_softmax(logits / 4.0, dim=1), soft, reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
            if done == steps:
                break
    model.eval()
    return {"steps": steps, "final_loss": loss.item()}


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return right / len(loader.dataset)


def run(out: Path, target: str = "x86-cpu", speedup: float = 1.5, **search) -> "edgeprune.PruneResult":
    """Train, prune for ``target`` to ``speedup``, and check the files; ``search``: more options
    of edgeprune.prune (population=, generations=, ...)."""
    torch.manual_seed(0)
    sets = fashion_mnist()
    loaders = {name: DataLoader(s, batch_size=128, shuffle=name == "train", generator=torch.Generator().manual_seed(0)) for name, s in sets.items()}
    model = make_model()
    train(model, loaders["train"], epochs=1.0)
    print(f"trained: test accuracy {accuracy(model, loaders['test']):.2%}")

    result = edgeprune.prune(
        model, torch.zeros(1, 1, 28, 28), target=target, speedup=speedup,
        calibration=DataLoader(Subset(sets["train"], range(512)), batch_size=128),  # (images, labels): edgeprune takes the images
        score=lambda m: accuracy(m, loaders["holdout"]),
        test_score=lambda m: accuracy(m, loaders["test"]),
        fine_tune=lambda m, teacher, epochs: train(m, loaders["train"], epochs, teacher, lr=0.01),
        metric="top-1 accuracy", out=out, **({"population": 8, "generations": 3, "finetune_epochs": 1.0} | search),
    )
    r = result.report
    print(f"{r.target}: {r.baseline_ms:.4f} -> {r.pruned_ms:.4f} ms ({r.speedup:.2f}x, budget {r.budget_ms:.4f} ms, "
          f"{'met' if result.budget_met else 'missed'}); {r.metric} {r.baseline_score:.2%} -> {r.pruned_score:.2%}")

    # The delivered files: plan.json + state_dict.pt rebuild the network on the original object
    # (no pickles), and model.onnx runs in onnxruntime.
    rebuilt = edgeprune.load_pruned(out / "plan.json", out / "state_dict.pt", original=model)
    x = sets["test"].tensors[0][:8]
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), result.model(x), atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_classes = [int(session.run(None, {name: image[None].numpy()})[0].argmax()) for image in x]
    agree = sum(c == int(t) for c, t in zip(onnx_classes, rebuilt(x).argmax(1)))
    print(f"model.onnx gives the rebuilt network's class on {agree} of {len(x)} test images")
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python examples/python_api.py OUT_DIR", file=sys.stderr)
        return 2
    try:
        return 0 if run(Path(argv[0])).budget_met else 1
    except edgeprune.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
