"""The seed papers' modes, each row measured in one run (issue 17): transfer-learning head pruning
and feature selection (EvoPruneDeepTL), a pruned spiking VGG (CCSRP), 2:4 weight sparsity.

    python tools/bench_seeds.py --work /tmp/seeds   # all rows, about an hour on a 2-core VM
    python tools/bench_seeds.py --rows head         # any of: head, features, snn, sparsity
    python tools/bench_seeds.py --smoke             # every row on sklearn's digits, tiny epochs, 4 candidates (seconds)

Transfer rows (``--mode head`` and ``--mode features``), as a user runs them (the CLI): the model
trained on Fashion-MNIST classes 0-4 (the source), its head trained afresh on classes 5-9 with the
backbone frozen (``train --freeze-backbone``), then ``prune --mode MODE --speedup X`` on the target
task (x86-cpu). Head: ``edgeprune.transfer:transfer_vgg``, whose VGG-style head (flattened 7x7 map
→ 1024 neurons) is most of its latency, so the GA removes neurons to meet the budget. Features:
``edgeprune.transfer:transfer_net``, the 128 pooled features the head reads (the last conv's
channels go with them). The control row is the dense target model given the same fine-tune as
the pruned one (the prune's fine-tune trains the whole network, which the frozen-backbone head
never had): the pruned model's gain over the dense one is only the pruning's where it also beats
the control.

SNN row: ``edgeprune.snn:spiking_vgg`` (snntorch LIF, 4 steps) trained 5 epochs on Fashion-MNIST,
``prune --speedup 1/0.6``, and Torch-Pruning's uniform L1 pruning (channels rounded to the target's
step) at the least ratio whose fresh-session latency meets the same budget, given the same
fine-tune (plain labels by default, ``--snn-kd-alpha``); the dense model given that fine-tune is the
control. Distillation from the spiking teacher (``--kd-alpha 0.5``, the prune's default) took the
dense model itself from 85.5 % to 76.4 % in one epoch, and plain labels did not.
(Trained 2 epochs, the dense model was so far from converged, 79 %, that one more epoch lifted
any pruned network above it: a measure of training, not of pruning.)

Every row's files are re-timed in alternating fresh sessions in this run (ratios) and scored on
the test split.

2:4 row: the demo's MobileNetV2 (Fashion-MNIST 3x32x32, trained once and cached) given 2:4 masks
by magnitude on every layer TensorRT can run sparse (``edgeprune.space.sparsity``, what ``prune
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
from edgeprune.exporters.onnx import export_onnx
from edgeprune.exporters.onnx_bytes import export_onnx_bytes

from edgeprune.tasks.data import load_data
from edgeprune.jobs.demo import DEMO_MODEL, DEMO_SHAPE, demo_weights
from edgeprune.api.settings import parse_sparsity
from edgeprune.tasks.models import load_model
from edgeprune.profiling.profiler import Profiler
from edgeprune.space.pruned import load_pruned
from edgeprune.space.channels import layer_widths
from edgeprune.space.sparsity import (
    apply,
    make_permanent,
    model_share,
    onnx_share,
)
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.task import Classification, Recipe
from edgeprune.tasks.training import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_uniform import uniform_prune
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile_file
from timing import blob_digest, time_alternating

HOLDOUT = 2000
DATA = "fashion-mnist"  # --smoke: digits, resized to 28x28 (GREY) for the transfer and spiking rows
GREY = None
SNN_SIDE = 28  # --smoke: 12 (the spiking VGG pools its last spikes globally: any side works)
SEARCH = ["--population", "12", "--generations", "5"]
TARGET = "x86-cpu"
IN_PROCESS = False  # --smoke: the CLI's main() in this process (no interpreter start per command)


def _data_args() -> list[str]:
    return [] if GREY is None else ["--input-shape", "x".join(map(str, GREY))]


def sparsity_row(epochs: float, seed: int) -> dict:
    pattern = parse_sparsity("2:4")
    if IN_PROCESS:  # smoke: a tiny residual net with random weights
        shape = (3, 16, 16)
        data = load_data(DATA, input_shape=shape, holdout=100, seed=seed)
        dense, _ = load_model(SMOKE_MODEL, num_classes=10)
    else:
        shape = DEMO_SHAPE
        data = load_data(DATA, input_shape=shape, holdout=5000, seed=seed)
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


TRANSFER = {  # mode: (factory, what the mode searches, how many of it the dense model has)
    "head": ("edgeprune.transfer:transfer_vgg", "neurons of the head's hidden layer", 1024),
    "features": ("edgeprune.transfer:transfer_net", "features the head reads", 128),
}


def transfer_row(args, work: Path, mode: str) -> dict:
    """Source → frozen-backbone head → ``prune --mode MODE``, as a user runs it (the CLI); then
    the dense target model given the prune's fine-tune (the control), and both files timed."""
    model, _, full = TRANSFER[mode]
    work = work / mode
    source, target, out = work / "source.pt", work / "target.pt", work / "pruned"
    common = ["--holdout", str(HOLDOUT), "--seed", str(args.seed), "--no-progress", *_data_args()]
    if not source.exists():
        _cli("train", model, "--data", f"{DATA}@0-4", "--epochs", str(args.source_epochs), "--out", str(source), *common)
    if not target.exists():
        _cli("train", model, "--data", f"{DATA}@5-9", "--epochs", str(args.head_epochs), "--weights", str(source), "--freeze-backbone", "--out", str(target), *common)
    speedup = args.head_speedup if mode == "head" else args.speedup
    if not (out / "report.json").exists():
        _cli("prune", model, "--weights", str(target), "--data", f"{DATA}@5-9", "--mode", mode, "--speedup", str(speedup), "--target", TARGET,
             *SEARCH, "--finetune-epochs", str(args.finetune_epochs), "--out", str(out), "--no-cache", *common)
    report = json.loads((out / "report.json").read_text())
    dense, _ = load_model(model, num_classes=5, weights=str(target))
    pruned = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    data = load_data(f"{DATA}@5-9", input_shape=GREY, holdout=HOLDOUT, seed=args.seed)
    control = _fine_tuned(dense, data, args.finetune_epochs, args.seed)
    latency = _timed({"dense": dense, "pruned": pruned}, (1, 1, 28, 28))
    (kept,) = report["pruned"]["group_widths"].values()
    return {
        "dense_acc": evaluate(dense, data.test), "control_acc": evaluate(control, data.test), "pruned_acc": evaluate(pruned, data.test),
        "ratio": latency["pruned"] / latency["dense"], "kept": kept, "full": full, "speedup": speedup, "budget_met": report["budget_met"],
    }


def snn_row(args, work: Path) -> dict:
    """A spiking VGG trained on Fashion-MNIST, ``prune --speedup`` (the CLI), and Torch-Pruning's
    uniform L1 pruning at the least ratio whose latency meets the same budget, given the same
    fine-tune; every file re-timed in alternating fresh sessions, accuracy on the test split."""
    model = "edgeprune.snn:spiking_vgg"
    work = work / "snn"
    trained, out = work / "snn.pt", work / "pruned"
    common = ["--holdout", str(HOLDOUT), "--seed", str(args.seed), "--no-progress", *(["--input-shape", f"1x{SNN_SIDE}x{SNN_SIDE}"] if GREY else [])]
    if not trained.exists():
        _cli("train", model, "--data", DATA, "--epochs", str(args.snn_epochs), "--out", str(trained), *common)
    if not (out / "report.json").exists():
        _cli("prune", model, "--weights", str(trained), "--data", DATA, "--speedup", str(args.snn_speedup), "--target", TARGET, *SEARCH,
             "--refine-top", "1" if IN_PROCESS else "3", "--finetune-epochs", str(args.finetune_epochs), "--kd-alpha", str(args.snn_kd_alpha),
             "--out", str(out), "--no-cache", *common)
    report = json.loads((out / "report.json").read_text())
    dense, _ = load_model(model, num_classes=10, weights=str(trained))
    pruned = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    data = load_data(DATA, input_shape=GREY and (1, SNN_SIDE, SNN_SIDE), holdout=HOLDOUT, seed=args.seed)
    shape = (1, 1, SNN_SIDE, SNN_SIDE)
    profile = load_profile(TARGET)
    profiler = Profiler(profile, use_cache=False)
    anchor = profiler.set_reference("bench-seeds-snn", shape, export_onnx_bytes(dense, shape, profile.opset), recheck=False)
    budget = anchor.median_ms / args.snn_speedup  # the prune's budget, in this run's units
    for ratio in (r / 20 for r in range(1, 20)):  # least pruning first
        uniform = uniform_prune(dense, ratio, profile.channel_step, shape[1:])
        blob = export_onnx_bytes(uniform, shape, profile.opset)
        if profiler.latency(f"bench-seeds-uniform-{blob_digest(blob)}", shape, lambda b=blob: b, fresh=True)[0].median_ms <= budget:
            break
    else:
        raise SystemExit(f"no uniform pruning ratio up to 0.95 meets {budget:.4f} ms")
    profiler.close()
    uniform = _fine_tuned(uniform, data, args.finetune_epochs, args.seed, teacher=dense, kd_alpha=args.snn_kd_alpha)
    control = _fine_tuned(dense, data, args.finetune_epochs, args.seed, kd_alpha=args.snn_kd_alpha)
    latency = _timed({"dense": dense, "pruned": pruned, "uniform": uniform}, shape)
    return {
        "dense_acc": evaluate(dense, data.test), "pruned_acc": evaluate(pruned, data.test), "uniform_acc": evaluate(uniform, data.test),
        "control_acc": evaluate(control, data.test),
        "ratio": latency["pruned"] / latency["dense"], "uniform_ratio": latency["uniform"] / latency["dense"], "uniform_pruning": ratio,
        "widths": {name: _conv_widths(m) for name, m in (("dense", dense), ("pruned", pruned), ("uniform", uniform))}, "budget_met": report["budget_met"],
        "target": 1 / args.snn_speedup,
    }


def _conv_widths(model) -> str:
    """``32/64/128``: the output channels of the model's convolutions, in the order they run."""
    return "/".join(str(w) for name, w in layer_widths(model).items() if name.startswith("convs."))


def _fine_tuned(model, data, epochs: float, seed: int, teacher=None, kd_alpha: float = 0.5):
    """A copy of ``model`` given the prune job's fine-tune (LR 0.01, distillation ``kd_alpha`` at
    T = 4 from ``teacher``, by default the model itself as it was)."""
    student = copy.deepcopy(model)
    task = Classification(data, Recipe(0.01, 128, kd_alpha, 4.0, progress=False), seed=seed)
    task.fine_tune(student, teacher if teacher is not None else model, epochs, seed, "fine-tune")
    return student.eval()


def _timed(models: dict, shape: tuple[int, ...]) -> dict[str, float]:
    """Median ms of each model's ONNX file, in alternating fresh sessions (x86-cpu), this run."""
    profile = load_profile(TARGET)
    files = {name: export_onnx(m.eval(), shape, profile.opset) for name, m in models.items()}
    profiler = Profiler(profile, use_cache=False)
    profiler.set_reference("bench-seeds-dense", shape, files["dense"], recheck=False)
    latency = time_alternating(profiler, files, shape, tag="bench-seeds")
    profiler.close()
    return latency


def _cli(*args: str) -> None:
    if IN_PROCESS:
        from edgeprune.cli import main as cli_main

        code = cli_main(list(args))
        if code not in (0, 1):
            raise SystemExit(f"edgeprune {args[0]} failed with exit code {code}")
        return
    run = subprocess.run([sys.executable, "-m", "edgeprune", *args], check=False, capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise SystemExit(f"edgeprune {args[0]} failed: {run.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="head,features,snn,sparsity", help="rows to measure, comma-separated (default head,features,snn,sparsity)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-epochs", type=float, default=2.0, help="transfer rows: training of the backbone on the source classes (default 2)")
    ap.add_argument("--head-epochs", type=float, default=1.0, help="transfer rows: training of the new head on the target classes (default 1)")
    ap.add_argument("--head-speedup", type=float, default=1.6, help="the head-mode prune's --speedup (default 1.6)")
    ap.add_argument("--speedup", type=float, default=1.3, help="the feature-mode prune's --speedup (default 1.3)")
    ap.add_argument("--snn-epochs", type=float, default=5.0, help="training of the spiking VGG (default 5)")
    ap.add_argument("--snn-speedup", type=float, default=1 / 0.6, help="the spiking VGG's prune --speedup (default 1/0.6: 0.6x the latency)")
    ap.add_argument("--snn-kd-alpha", type=float, default=0.0, help="the spiking VGG's --kd-alpha, for its prune, uniform pruning and control alike (default 0: plain labels)")
    ap.add_argument("--finetune-epochs", type=float, default=1.0, help="the prunes' fine-tune, and the controls' (default 1)")
    ap.add_argument("--sparsity-epochs", type=float, default=0.3, help="2:4 row: fine-tune with the masks fixed (default 0.3)")
    ap.add_argument("--work", type=Path, help="keep the rows' models and runs here, and reuse them")
    ap.add_argument("--smoke", action="store_true",
                    help=f"every row on sklearn's digits, tiny epochs, 4 candidates, the CLI run in this process ({SMOKE_NOTE})")
    args = ap.parse_args(argv)
    unknown = set(args.rows.split(",")) - {"head", "features", "snn", "sparsity"}
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from head, features, snn, sparsity")
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            global DATA, GREY, SEARCH, TARGET, IN_PROCESS, HOLDOUT, SNN_SIDE
            SNN_SIDE = 12
            DATA, GREY, HOLDOUT, SEARCH, IN_PROCESS = "digits", (1, 28, 28), 100, ["--population", "4", "--generations", "1", "--widen-passes", "0"], True
            TARGET = smoke_profile_file("x86-cpu", Path(folder))
            for name in ("source_epochs", "head_epochs", "snn_epochs"):
                setattr(args, name, 0.2)
            args.finetune_epochs, args.sparsity_epochs, args.work = 0.05, 0.05, Path(folder) / "work"
            print(SMOKE_NOTE)
            return _run(args)
    return _run(args)


def _run(args) -> None:
    rows = args.rows.split(",")
    torch.manual_seed(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    work.mkdir(parents=True, exist_ok=True)
    for mode in ("head", "features"):
        if mode not in rows:
            continue
        r = transfer_row(args, work, mode)
        _, what, _ = TRANSFER[mode]
        print(f"\n## Transfer learning, --mode {mode} ({TRANSFER[mode][0]}, Fashion-MNIST 0-4 → 5-9, test split of 5-9)\n")
        print(f"| model | {what} | test accuracy | latency × dense (alternating, this run) | budget met |")
        print("|---|---:|---:|---:|---|")
        print(f"| dense head on the frozen source backbone | {r['full']} | {r['dense_acc']:.2%} | 1.000 | - |")
        print(f"| the same, given the prune's fine-tune ({args.finetune_epochs:g} epoch, control) | {r['full']} | {r['control_acc']:.2%} | 1.000 | - |")
        print(f"| --mode {mode} --speedup {r['speedup']:g}, fine-tuned | {r['kept']} ({1 - r['kept'] / r['full']:.0%} fewer) | {r['pruned_acc']:.2%} | {r['ratio']:.3f} | {'yes' if r['budget_met'] else 'no'} |")
    if "snn" in rows:
        r = snn_row(args, work)
        widths = r["widths"]
        print(f"\n## Spiking VGG (snntorch LIF, 4 steps, Fashion-MNIST, test split), pruned to {r['target']:.2f}x latency\n")
        print("| model | conv widths | test accuracy | latency × dense (alternating, this run) | budget met |")
        print("|---|---|---:|---:|---|")
        print(f"| dense | {widths['dense']} | {r['dense_acc']:.2%} | 1.000 | - |")
        print(f"| dense, given the same fine-tune ({args.finetune_epochs:g} epoch, kd-alpha {args.snn_kd_alpha:g}, control) | {widths['dense']} | {r['control_acc']:.2%} | 1.000 | - |")
        print(f"| edgeprune --speedup {args.snn_speedup:.3g}, fine-tuned | {widths['pruned']} | {r['pruned_acc']:.2%} | {r['ratio']:.3f} | {'yes' if r['budget_met'] else 'no'} |")
        print(f"| uniform L1 (Torch-Pruning, ratio {r['uniform_pruning']:.2f}, least meeting the budget), same fine-tune | {widths['uniform']} | {r['uniform_acc']:.2%} | {r['uniform_ratio']:.3f} | - |")
    if "sparsity" in rows:
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
