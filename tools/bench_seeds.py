"""The seed papers' modes, each row measured in one run (issue 17). So far: transfer-learning
feature selection (EvoPruneDeepTL) and 2:4 weight sparsity.

    python tools/bench_seeds.py                  # about 10 minutes on a 2-core VM
    python tools/bench_seeds.py --rows features  # one of: features, sparsity

Feature row: ``edgeprune.transfer:transfer_net`` trained on Fashion-MNIST classes 0-4 (the source),
its head trained afresh on classes 5-9 with the backbone frozen (``train --freeze-backbone``), then
``prune --mode features --speedup 1.3`` on the target task (x86-cpu, the GA keeps the features the
head reads, and the last conv's channels go with the rest). Test accuracy on the target's test
split; latency of both files re-timed in alternating fresh sessions in this run (ratio).

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
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from edgeprune.data import load_data
from edgeprune.demo import DEMO_MODEL, DEMO_SHAPE, demo_weights
from edgeprune.exporters.onnx import export_onnx
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.models import load_model, parse_shape
from edgeprune.profiling.profiler import Profiler
from edgeprune.pruned import load_pruned
from edgeprune.targets import load_profile
from edgeprune.sparsity import apply, make_permanent, model_share, onnx_share, parse_sparsity
from edgeprune.task import Classification, Recipe
from edgeprune.training import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from timing import time_alternating  # noqa: E402


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


def features_row(args, work: Path) -> dict:
    """Source → frozen-backbone head → prune --mode features, as a user runs it (the CLI)."""
    model = "edgeprune.transfer:transfer_net"
    source, target, out = work / "source.pt", work / "target.pt", work / "features"
    common = ["--holdout", "2000", "--seed", str(args.seed), "--no-progress"]
    if not source.exists():
        _cli("train", model, "--data", "fashion-mnist@0-4", "--epochs", str(args.source_epochs), "--out", str(source), *common)
    if not target.exists():
        _cli("train", model, "--data", "fashion-mnist@5-9", "--epochs", str(args.head_epochs), "--weights", str(source), "--freeze-backbone", "--out", str(target), *common)
    if not (out / "report.json").exists():
        _cli("prune", model, "--weights", str(target), "--data", "fashion-mnist@5-9", "--mode", "features", "--speedup", str(args.speedup),
             "--population", "12", "--generations", "5", "--finetune-epochs", "1", "--out", str(out), "--no-cache", *common)
    report = json.loads((out / "report.json").read_text())
    dense, _ = load_model(model, num_classes=5, weights=str(target))
    pruned = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    profile = load_profile("x86-cpu")
    shape = (1, 1, 28, 28)
    files = {name: export_onnx(m.eval(), shape, profile.opset) for name, m in (("dense", dense), ("pruned", pruned))}
    profiler = Profiler(profile, use_cache=False)
    profiler.set_reference("bench-seeds-dense", shape, files["dense"], recheck=False)
    latency = time_alternating(profiler, files, shape, tag="bench-seeds")
    profiler.close()
    (group, kept), = report["pruned"]["group_widths"].items()
    return {
        "dense_acc": report["baseline"]["accuracy"], "pruned_acc": report["pruned"]["accuracy"],
        "ratio": latency["pruned"] / latency["dense"], "features": (kept, 128), "budget_met": report["budget_met"],
    }


def _cli(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise SystemExit(f"edgeprune {args[0]} failed: {run.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity-epochs", type=float, default=0.3, help="fine-tune with the masks fixed (default 0.3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="features,sparsity", help="rows to measure (default features,sparsity)")
    ap.add_argument("--source-epochs", type=float, default=2.0, help="training of the backbone on the source classes (default 2)")
    ap.add_argument("--head-epochs", type=float, default=1.0, help="training of the new head on the target classes (default 1)")
    ap.add_argument("--speedup", type=float, default=1.3, help="the feature-mode prune's --speedup (default 1.3)")
    ap.add_argument("--work", type=Path, help="keep the feature row's models and run here, and reuse them")
    args = ap.parse_args()
    rows = args.rows.split(",")
    torch.manual_seed(args.seed)
    if "features" in rows:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench-seeds-"))
        work.mkdir(parents=True, exist_ok=True)
        f = features_row(args, work)
        print("\n## Transfer learning, feature selection (Fashion-MNIST 0-4 → 5-9, test split of 5-9)\n")
        print("| model | features the head reads | test accuracy | latency × dense (alternating, this run) | budget met |")
        print("|---|---:|---:|---:|---|")
        print(f"| dense head on the frozen source backbone | 128 | {f['dense_acc']:.2%} | 1.000 | - |")
        print(f"| --mode features --speedup {args.speedup:g}, fine-tuned | {f['features'][0]} | {f['pruned_acc']:.2%} | {f['ratio']:.3f} | {'yes' if f['budget_met'] else 'no'} |")
    if "sparsity" not in rows:
        return
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
