"""The seed papers' modes, each row measured in one run (issue 17). So far: 2:4 weight sparsity.

    python tools/bench_seeds.py                  # about 5 minutes on a 2-core VM

2:4 row: the demo's MobileNetV2 (Fashion-MNIST 3x32x32, trained once and cached) given 2:4 masks
by magnitude on every layer TensorRT can run sparse (``edgeprune.sparsity``, what ``prune
--sparsity 2:4`` does after its channel search), test accuracy dense, with the masks alone, and
after a fine-tune with the masks fixed (distillation from the dense model); then the share of
weight groups holding the pattern in the exported ONNX file and in torch, and how much of the
network's weights are in layers TensorRT can run sparse. Its latency is not measured: ONNX Runtime
on a CPU runs 2:4 weights at dense speed, and no TensorRT device is available here.
"""

from __future__ import annotations

import argparse
import copy

import torch

from edgeprune.data import load_data
from edgeprune.demo import DEMO_MODEL, DEMO_SHAPE, demo_weights
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.models import load_model, parse_shape
from edgeprune.sparsity import apply, make_permanent, model_share, onnx_share, parse_sparsity
from edgeprune.task import Classification, Recipe
from edgeprune.training import evaluate


def sparsity_row(epochs: float, seed: int) -> dict:
    pattern = parse_sparsity("2:4")
    shape = parse_shape(DEMO_SHAPE)
    data = load_data("fashion-mnist", input_shape=shape, holdout=5000, seed=seed)
    dense, _ = load_model(DEMO_MODEL, num_classes=10, weights=str(demo_weights(seed, progress=False)))
    model = copy.deepcopy(dense)
    before = evaluate(dense, data.test)
    layers = apply(model, pattern)
    masked = evaluate(model, data.test)
    task = Classification(data, Recipe(0.01, 128, 0.5, 4.0, progress=False), seed=seed)
    task.fine_tune(model, dense, epochs, seed, "2:4 fine-tune")
    make_permanent(model)
    after = evaluate(model, data.test)
    torch_share = model_share(model, pattern)
    file_share = onnx_share(export_onnx_bytes(model.eval(), (1, *shape), 17), pattern)
    return {"layers": len(layers), "before": before, "masked": masked, "after": after, "torch": torch_share, "onnx": file_share, "epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity-epochs", type=float, default=0.3, help="fine-tune with the masks fixed (default 0.3)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    r = sparsity_row(args.sparsity_epochs, args.seed)
    print("\n## 2:4 weight sparsity (MobileNetV2, Fashion-MNIST 3x32x32, test split)\n")
    print("| model | test accuracy | weight groups with the 2:4 pattern (ONNX file) | layers sparse / dense in the file | weights in sparse-eligible layers |")
    print("|---|---:|---:|---|---:|")
    print(f"| dense | {r['before']:.2%} | - | - | - |")
    print(f"| 2:4 masks by magnitude, no fine-tune | {r['masked']:.2%} | - | - | - |")
    print(f"| 2:4, fine-tuned {r['epochs']:g} epoch with the masks fixed | {r['after']:.2%} | "
          f"{r['onnx']['share']:.2%} ({r['onnx']['groups_satisfying']}/{r['onnx']['groups']}) | "
          f"{r['onnx']['sparse_layers']} / {r['onnx']['dense_layers']} | {r['torch']['eligible_weight_share']:.1%} |")


if __name__ == "__main__":
    main()
