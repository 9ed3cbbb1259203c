"""A complete user task for ``edgeprune prune --task``: own data handling, own metric, own training,
and a model whose forward returns a dict (class logits plus an embedding for retrieval).

    python examples/fashion_task.py train fashion.pt          # ~1 min on 2 cores
    edgeprune prune examples.fashion_task:make_model --weights fashion.pt \\
        --task examples.fashion_task:make_task --speedup 1.5

edgeprune calls ``make_task()`` and uses only what the returned object offers:

* ``example_input()``: one input ``[1, 1, 32, 32]``;
* ``calibration_batches()``: a few input batches (BatchNorm is re-estimated on them after a cut);
* ``score(model)``: balanced accuracy (mean recall over classes) on a held-out part of TRAIN, in [0, 1];
* ``test_score(model)``: the same on the test split, for the report only;
* ``fine_tune(model, teacher, epochs)``: this file's own training loop, distilling from ``teacher``.

The images are Fashion-MNIST, read with edgeprune's loader for brevity (your task would read its
own files); everything after that (scaling, padding, splits, the loss) is this file's.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 10
SIZE = 32


class TwoHeadNet(nn.Module):
    """A small CNN returning ``{"logits": [N, 10], "embedding": [N, 64]}``: the embedding is the
    last conv's pooled channels, so edgeprune keeps that conv's width (its channels are outputs)."""

    def __init__(self, num_classes: int = CLASSES):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(1, 32, 1), block(32, 64, 2), block(64, 96, 1), block(96, 128, 2), block(128, 64, 1))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        embedding = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return {"logits": self.head(embedding), "embedding": embedding}


def make_model(num_classes: int = CLASSES) -> nn.Module:
    return TwoHeadNet(num_classes)


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] → float in [0, 1], zero-padded to 32×32."""
    return F.pad(images.float() / 255.0, (2, 2, 2, 2))


class FashionTask:
    name = "fashion-mnist, balanced accuracy"
    metric = "balanced accuracy"

    def __init__(self, train_items: int = 12000, holdout_items: int = 2000, seed: int = 0):
        from edgeprune.tasks.data import load_data

        data = load_data("fashion-mnist", holdout=1, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.train.labels), generator=gen)
        pick = order[: train_items + holdout_items]
        images, labels = _prepare(data.train.images[pick]), data.train.labels[pick]
        self.train = (images[:train_items], labels[:train_items])
        self.holdout = (images[train_items:], labels[train_items:])
        self.test = (_prepare(data.test.images), data.test.labels)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, SIZE, SIZE)

    def calibration_batches(self) -> list[torch.Tensor]:
        return list(self.train[0][:512].split(128))

    def score(self, model: nn.Module) -> float:
        return balanced_accuracy(model, *self.holdout)

    def test_score(self, model: nn.Module) -> float:
        return balanced_accuracy(model, *self.test)

    def fine_tune(self, model: nn.Module, teacher: nn.Module, epochs: float) -> dict:
        return fit(model, *self.train, epochs, teacher=teacher)


def make_task() -> FashionTask:
    return FashionTask()


@torch.no_grad()
def balanced_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the share of that class's images predicted right."""
    model.eval()
    predicted = torch.cat([model(x)["logits"].argmax(1) for x in images.split(500)])
    recalls = [(predicted[labels == c] == c).float().mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean())


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: float, teacher: nn.Module | None = None,
        lr: float = 0.01, batch: int = 128) -> dict:
    """SGD with a cosine schedule; with ``teacher``, half the loss is distillation at T = 4."""
    steps = max(1, round(epochs * len(labels) / batch))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    if teacher is not None:
        teacher.eval()
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(len(labels), (batch,), generator=gen)
        x, y = images[idx], labels[idx]
        logits = model(x)["logits"]
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x)["logits"] / 4.0, dim=1)
            loss = 0.5 * loss + 0.5 * 16.0 * F.kl_div(F.log_softmax(logits / 4.0, dim=1), soft, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return {"steps": steps, "final_loss": loss.item()}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python examples/fashion_task.py train WEIGHTS.pt", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    task, model = make_task(), make_model()
    fit(model, *task.train, epochs=2.0, lr=0.05)
    torch.save(model.state_dict(), argv[1])
    print(f"saved {argv[1]}: test balanced accuracy {task.test_score(model):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
