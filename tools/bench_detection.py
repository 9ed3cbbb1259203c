"""edgeprune against Torch-Pruning's uniform pruning on a YOLO detector, at the same measured latency.

1. The composed detection set (``edgeprune data make-detection``: Fashion-MNIST items on 160×160
   canvases, 2000 train / 400 val) is made once and cached.
2. YOLOv8n is built from its yaml (random weights: nothing can be downloaded) and trained with
   ultralytics' trainer for ``--train-epochs`` on train minus the holdout; cached.
3. edgeprune: the full ``prune --task detection`` job at ``--budget`` × the unpruned model's
   measured median latency, candidates ranked by ``--metric`` (mAP50) on the holdout.
4. uniform: Torch-Pruning's MagnitudePruner (L1, round_to = the target's step, the head's output
   convs and DFL kept) at the *smallest* ratio whose measured latency meets 0.97 × the budget
   (ratios scanned upwards in 0.05 steps, then in 0.01 steps below the first that meets it:
   rounding to the step makes latency jump between ratios), then the same fine-tune
   (ultralytics' trainer, same epochs).
5. Both exported ONNX files are timed again in one run (5 fresh sessions each, alternating, each
   timed in blocks alternating with the unpruned model; the median session is the latency) and
   both are scored on the val split (the test split here) by ultralytics' validator running the
   ONNX file in onnxruntime. The unpruned model and the unpruned model given the same fine-tune
   (the ceiling) get rows of their own. "meets" compares each file's latency with ``--budget`` ×
   the unpruned model's, both timed in this last step: the machine may have drifted since the
   prune job set its budget in milliseconds.

    python tools/bench_detection.py                      # ~1 h on 2 cores, most of it training
    python tools/bench_detection.py --train-epochs 30 --finetune-epochs 5
    python tools/bench_detection.py --smoke     # 24 canvases of 64x64, 1 epoch each, 4 candidates (seconds)

Run it on an otherwise idle machine: it measures latency.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_NOTE, smoke_profile_file  # noqa: E402
from timing import blob_digest, time_alternating  # noqa: E402

from edgeprune.tasks.compose import Composition, make_detection_set
from edgeprune.tasks.detection import Detection
from edgeprune.exporters.onnx import export_onnx
from edgeprune.tasks.outputs import output_layers
from edgeprune.api.settings import prune_config
from edgeprune.jobs.prune import run_prune
from edgeprune.profiling.cache import default_cache_path
from edgeprune.profiling.profiler import Profiler
from edgeprune.space.channels import ChannelSpace, macs_and_params
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.yolo import build, checkpoint_bytes

SIZE = 160
SHAPE = (3, SIZE, SIZE)
FINAL_SESSIONS = 5
TRAIN, VAL, HOLDOUT = 2000, 400, 400  # composed canvases, and the train images the search scores on




def data_set(root: Path) -> Path:
    folder = root / f"fashion-detection-{SIZE}"
    if not (folder / "data.yaml").exists():
        make_detection_set(folder, Composition(train=TRAIN, val=VAL, size=SIZE))
    return folder / "data.yaml"


def trained(root: Path, data_yaml: Path, epochs: int, seed: int) -> Path:
    """YOLOv8n trained from scratch with ultralytics' recipe (cached)."""
    path = root / f"yolov8n-e{epochs}-s{seed}.pt"
    if not path.exists():
        task = Detection(str(data_yaml), SIZE, HOLDOUT, seed)
        net = build("yolov8n.yaml", task.num_classes, task.names)
        t = time.perf_counter()
        task.fine_tune(net, None, float(epochs), seed, f"train YOLOv8n from scratch ({epochs} epochs)")
        print(f"trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        path.write_bytes(checkpoint_bytes(net, str(data_yaml), SIZE))
        task.close()
    return path


def uniform_prune(net, ratio: float, step: int):
    pruned = copy.deepcopy(net).eval()
    example = torch.zeros(1, *SHAPE)
    keep = output_layers(pruned, example) + [m for n, m in pruned.named_modules() if n.endswith(".dfl.conv")]
    pruner = tp.pruner.MagnitudePruner(
        pruned, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio, round_to=step, ignored_layers=keep,
    )
    pruner.step()
    for name, p in pruned.named_parameters():
        p.requires_grad_(".dfl" not in name)
    return pruned.eval()


def run_uniform(net, profiler: Profiler, budget_ms: float, step: int, opset: int):
    """Smallest ratio (least pruning) whose measured latency meets the budget: 0.05 steps, then
    0.01 steps below the first ratio that meets it."""

    def meets(ratio: float):
        candidate = uniform_prune(net, ratio, step)
        blob = export_onnx(candidate, (1, *SHAPE), opset)
        stats, _ = profiler.latency(f"bench-det-uniform-{ratio:.2f}-{blob_digest(blob)}", (1, *SHAPE), lambda: blob, fresh=True)
        print(f"uniform ratio {ratio:.2f}: {stats.median_ms:.3f} ms (budget {budget_ms:.3f})", file=sys.stderr, flush=True)
        return candidate if stats.median_ms <= budget_ms else None

    for coarse in np.arange(0.05, 0.96, 0.05):
        found = meets(round(float(coarse), 2))
        if found is not None:
            for fine in np.arange(coarse - 0.04, coarse - 0.005, 0.01):
                closer = meets(round(float(fine), 2))
                if closer is not None:
                    return closer, round(float(fine), 2)
            return found, round(float(coarse), 2)
    raise RuntimeError("no uniform ratio meets the budget")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=0.6, help="fraction of the unpruned median latency (default 0.6)")
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--train-epochs", type=int, default=20, help="epochs YOLOv8n is trained from scratch (cached; default 20)")
    ap.add_argument("--finetune-epochs", type=float, default=3.0)
    ap.add_argument("--metric", default="mAP50", choices=("mAP50", "mAP50-95"))
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--refine-top", type=int, default=3)
    ap.add_argument("--refine-epochs", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ceiling", action="store_true", help="skip the unpruned model's own fine-tune (the ceiling row)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--keep", help="keep edgeprune's output folder here (model.pt, report.html, ...)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"24 canvases of 64x64, 1 training and 1 fine-tune epoch, 4 candidates, no ceiling row ({SMOKE_NOTE})")
    args = ap.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            global SIZE, SHAPE, FINAL_SESSIONS, TRAIN, VAL, HOLDOUT
            SIZE, FINAL_SESSIONS, TRAIN, VAL, HOLDOUT = 64, 2, 24, 8, 8
            SHAPE = (3, SIZE, SIZE)
            args.train_epochs, args.finetune_epochs, args.population, args.generations = 1, 1.0, 4, 1
            args.refine_top, args.refine_epochs, args.no_ceiling = 1, 0.0, True
            args.target = smoke_profile_file(args.target, Path(folder))
            print(SMOKE_NOTE)
            return _run(args, Path(folder))
    root = default_cache_path().parent / "bench-detection"
    root.mkdir(parents=True, exist_ok=True)
    return _run(args, root)


def _run(args, root: Path) -> int:
    profile = load_profile(args.target)
    data_yaml = data_set(root)
    weights = trained(root, data_yaml, args.train_epochs, args.seed)
    task = Detection(str(data_yaml), SIZE, HOLDOUT, args.seed, metric=args.metric)
    other = "mAP50-95" if args.metric == "mAP50" else "mAP50"
    net = build(str(weights), task.num_classes, task.names)
    full_bytes = export_onnx(net, (1, *SHAPE), profile.opset)
    rows = []

    def row(method, model, blob, latency, note):
        rows.append({
            "method": method, "latency_ms": latency, **task.file_maps(blob, method), "macs": macs_and_params(model, SHAPE)[0], "note": note,
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    row("unpruned", net, full_bytes, None, f"trained {args.train_epochs} epochs from scratch")
    if not args.no_ceiling:
        ceiling = copy.deepcopy(net)
        task.fine_tune(ceiling, net, args.finetune_epochs, args.seed, "fine-tune unpruned (ceiling)")
        row("unpruned+ft", ceiling, export_onnx(ceiling, (1, *SHAPE), profile.opset), None, "same fine-tune: the ceiling")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "out"
        t = time.perf_counter()
        report = run_prune(prune_config(
            model=f"yolo:{weights}", task="detection", data=f"yolo:{data_yaml}", input_shape=f"3x{SIZE}x{SIZE}", holdout=HOLDOUT,
            detection_metric=args.metric, target=args.target, speedup=1 / args.budget, population=args.population,
            generations=args.generations, refine_top=args.refine_top, refine_epochs=args.refine_epochs,
            finetune_epochs=args.finetune_epochs, out=str(out), seed=args.seed, progress=not args.smoke,
            **({"widen_passes": 0} if args.smoke else {}),
        ))
        prune_s = time.perf_counter() - t
        ours_bytes = (out / "model.onnx").read_bytes()
        from edgeprune.space.pruned import load_pruned

        ours = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    budget = report["budget_ms"]
    profiler = Profiler(profile)
    space = ChannelSpace(net, SHAPE, profile.channel_step)
    profiler.set_reference(space.arch_key(space.widths_from_indices(space.full_indices())), (1, *SHAPE), full_bytes)
    t = time.perf_counter()
    # The same 3 % margin the prune job's search keeps, in this profiler's units (its anchor).
    uniform, ratio = run_uniform(net, profiler, args.budget * profiler.anchor.median_ms * 0.97, profile.channel_step, profile.opset)
    uniform_s = time.perf_counter() - t
    task.fine_tune(uniform, net, args.finetune_epochs, args.seed, "fine-tune uniform")
    uniform_bytes = export_onnx(uniform, (1, *SHAPE), profile.opset)
    latency = time_alternating(profiler, {"edgeprune": ours_bytes, "uniform": uniform_bytes}, (1, *SHAPE), FINAL_SESSIONS, tag="bench-det")
    unpruned_ms = profiler.anchor.median_ms
    profiler.close()
    rows[0]["latency_ms"] = unpruned_ms
    row("edgeprune", ours, ours_bytes, latency["edgeprune"], f"prune job {prune_s:.0f} s (search {report['phases']['search_s']:.0f} s)")
    row("uniform", uniform, uniform_bytes, latency["uniform"], f"ratio {ratio:.2f}, found in {uniform_s:.0f} s")
    task.close()
    for r in rows:
        r["ratio"] = None if r["latency_ms"] is None else r["latency_ms"] / unpruned_ms
        r["meets"] = None if r["method"].startswith("unpruned") else bool(r["ratio"] <= args.budget)
    print(f"\nYOLOv8n, composed Fashion-MNIST detection set, {SIZE}x{SIZE}, {profile.name}, budget {args.budget:g}x "
          f"(the prune job's {budget:.3f} ms; unpruned {unpruned_ms:.3f} ms when re-timed)")
    print(f"{'method':<13}{'latency ms':>11}{'x unpruned':>11}{'meets':>7}{'test ' + args.metric:>15}{'test ' + other:>15}{'GMACs':>8}  note")
    for r in rows:
        lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}"
        ratio_text = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        meets = "-" if r["meets"] is None else str(r["meets"])
        print(f"{r['method']:<13}{lat:>11}{ratio_text:>11}{meets:>7}{r[args.metric]:>15.2%}{r[other]:>15.2%}{r['macs'] / 1e9:>8.3f}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
