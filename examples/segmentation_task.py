"""Semantic segmentation as a user task: torchvision's LR-ASPP (MobileNetV3-Large backbone) on a
*composed* mask set, scored by mean IoU. The model returns ``{"out": [N, 4, H, W]}``; edgeprune
keeps the two classifier convs that make the mask whole and prunes the rest.

The data set is composed, not collected: each 64×64 canvas holds one or two Fashion-MNIST items
pasted at random places and scales; a pixel's class is its item's group (1 tops: T-shirt,
pullover, dress, coat, shirt; 2 footwear: sandal, sneaker, ankle boot; 3 trouser and bag) where
the item is brighter than ``INK`` (its own silhouette), 0 (background) elsewhere; a later item
covers an earlier one.

    python examples/segmentation_task.py train seg.pt     # ~4 minutes on 2 cores
    edgeprune prune examples.segmentation_task:make_model --weights seg.pt \\
        --task examples.segmentation_task:make_task --speedup 1.5
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 4  # background + three groups of Fashion-MNIST classes
GROUP = (1, 3, 1, 1, 1, 2, 1, 2, 3, 2)  # Fashion-MNIST class → mask class
SIZE = 64
INK = 40  # uint8 brightness above which a pasted pixel belongs to the item


def make_model(num_classes: int = CLASSES) -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            # torchvision's MobileNetV3 uses momentum 0.01, tuned for ImageNet-length training: after a
            # few hundred steps its running statistics are still mostly their initial values.
            m.momentum = 0.1
    return model


def compose(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` canvases ``[count, 3, SIZE, SIZE]`` in [0, 1] and their masks ``[count, SIZE, SIZE]``."""
    gen = torch.Generator().manual_seed(seed)
    canvases = torch.zeros(count, SIZE, SIZE)
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.long)
    for i in range(count):
        for _ in range(int(torch.randint(1, 3, (1,), generator=gen))):
            k = int(torch.randint(len(labels), (1,), generator=gen))
            side = int(torch.randint(28, 49, (1,), generator=gen))
            item = F.interpolate(images[k : k + 1].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
            y, x = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=gen))
            ink = item > INK
            canvases[i, y : y + side, x : x + side][ink] = item[ink] / 255.0
            masks[i, y : y + side, x : x + side][ink] = GROUP[int(labels[k])]
    return canvases.unsqueeze(1).expand(-1, 3, -1, -1).contiguous(), masks


class SegmentationTask:
    name = "composed Fashion-MNIST masks, mean IoU"
    metric = "mIoU"

    def __init__(self, train_items: int = 3000, holdout_items: int = 500, test_items: int = 500, seed: int = 0):
        from edgeprune.tasks.data import load_data

        data = load_data("fashion-mnist", holdout=1, seed=seed)
        self.train = compose(data.train.images, data.train.labels, train_items, seed)
        self.holdout = compose(data.train.images, data.train.labels, holdout_items, seed + 1)
        self.test = compose(data.test.images, data.test.labels, test_items, seed + 2)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, SIZE, SIZE)

    def calibration_batches(self) -> list[torch.Tensor]:
        return list(self.train[0][:256].split(64))

    def score(self, model: nn.Module) -> float:
        return mean_iou(model, *self.holdout)

    def test_score(self, model: nn.Module) -> float:
        return mean_iou(model, *self.test)

    def fine_tune(self, model: nn.Module, teacher: nn.Module, epochs: float) -> dict:
        return fit(model, *self.train, epochs, teacher=teacher)


def make_task() -> SegmentationTask:
    return SegmentationTask()


@torch.no_grad()
def mean_iou(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over classes present in the masks or predictions of intersection / union."""
    model.eval()
    predicted = torch.cat([model(x)["out"].argmax(1) for x in images.split(100)])
    confusion = torch.bincount(masks.flatten() * CLASSES + predicted.flatten(), minlength=CLASSES * CLASSES).view(CLASSES, CLASSES)
    hits = confusion.diag().float()
    union = confusion.sum(0).float() + confusion.sum(1).float() - hits
    return float((hits[union > 0] / union[union > 0]).mean())


def fit(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, epochs: float, teacher: nn.Module | None = None,
        lr: float = 5e-4, batch: int = 32) -> dict:
    """Adam with a cosine schedule on per-pixel cross-entropy; with ``teacher``, plus a per-pixel
    distillation term at T = 2 (half weight)."""
    steps = max(1, round(epochs * len(masks) / batch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    if teacher is not None:
        teacher.eval()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(masks), (batch,), generator=gen)
        x, y = images[idx], masks[idx]
        logits = model(x)["out"]
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x)["out"] / 2.0, dim=1)
            kd = F.kl_div(F.log_softmax(logits / 2.0, dim=1), soft, reduction="none").sum(1).mean()
            loss = 0.5 * loss + 0.5 * 4.0 * kd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return {"steps": steps, "final_loss": loss.item()}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python examples/segmentation_task.py train WEIGHTS.pt", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    task, model = make_task(), make_model()
    fit(model, *task.train, epochs=4.0, lr=2e-3)
    torch.save(model.state_dict(), argv[1])
    print(f"saved {argv[1]}: test mIoU {task.test_score(model):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
