"""edgeprune against uniform magnitude pruning at the same measured latency (issue 4's benchmark).

For each model (torchvision, 10 classes, 3x32x32, trained on Fashion-MNIST once and cached) and
each budget (a fraction of the unpruned model's measured median latency on the target):

* edgeprune: the full ``prune`` job (search, pick, KD fine-tune, export) — search time excludes
  the fine-tune;
* uniform: Torch-Pruning's MagnitudePruner (L1, round_to = the target's step, classifier kept)
  at the *smallest* ratio whose measured latency meets the budget (ratios scanned upwards in
  0.05 steps), then the same fine-tune (epochs, LR, distillation).

Both exported ONNX files are then timed again with the same protocol (5 fresh sessions each,
the two files' sessions alternating, each timed in blocks alternating with the unpruned model;
the median session is the latency) and both are scored on the test split *in onnxruntime*; the
unpruned model gets a row of its own for reference, and so does the unpruned model given the same
fine-tune (``unpruned+ft``): the ceiling a pruned network can be expected to reach. A target of
"uniform + 1 pp" above that row cannot be met by choosing channels.

The models are trained for 5 epochs by default (``--train-epochs``). After 1 epoch they are so far
from converged that a pruned network distilled for one more epoch catches up with its teacher
whichever channels it kept (at 0.5x both methods ended within 0.7 pp of the unpruned model, and
resnet18 above it), which measures how far one more epoch of training gets, not the pruning.

    python tools/bench_vs_uniform.py                        # both models, budgets 0.7 and 0.5
    python tools/bench_vs_uniform.py --models mobilenet_v2 --budgets 0.5 --finetune-epochs 1
    python tools/bench_vs_uniform.py --smoke     # a tiny residual net on sklearn's digits, 4 candidates (seconds)

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
import onnxruntime as ort
import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile_file  # noqa: E402
from timing import blob_digest, time_alternating  # noqa: E402

from edgeprune.tasks.data import load_data
from edgeprune.jobs.demo import train_and_save
from edgeprune.exporters.onnx import export_onnx
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import load_model
from edgeprune.api.settings import prune_config
from edgeprune.jobs.prune import run_prune
from edgeprune.profiling.cache import default_cache_path
from edgeprune.profiling.profiler import Profiler
from edgeprune.tasks.outputs import output_layers
from edgeprune.space.channels import ChannelSpace, macs_and_params
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.training import train

SHAPE = (3, 32, 32)
DATA = "fashion-mnist"

# Fresh sessions each final model is timed in (their median is the reported latency).
FINAL_SESSIONS = 5


def model_spec(name: str) -> str:
    return name if ":" in name else f"torchvision:{name}"


def trained_weights(name: str, epochs: float, seed: int, folder: Path | None = None) -> Path:
    # The demo's naming and recipe: mobilenet_v2 reuses the demo's trained weights.
    side = "x".join(map(str, SHAPE))
    path = (folder or default_cache_path().parent / "demo") / f"{name.replace(':', '-')}-{DATA}-{side}-e{epochs:g}-s{seed}.pt"
    if not path.exists():
        train_and_save(model_spec(name), data=DATA, input_shape=tuple(SHAPE), out=path, epochs=epochs, seed=seed, num_classes=10, progress=False)
    return path


def onnx_accuracy(onnx_bytes: bytes, split) -> float:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = total = 0
    for x, y in split.batches(1):  # the exported graph has a fixed batch of 1
        pred = session.run(None, {name: x.numpy().astype(np.float32)})[0].argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
    return correct / total




def uniform_prune(model, ratio: float, step: int | None, shape: tuple[int, ...] = SHAPE):
    """Torch-Pruning's uniform L1 pruning at ``ratio``, channel counts rounded to ``step``
    (None: unrounded, as Torch-Pruning does by default)."""
    pruned = copy.deepcopy(model).eval()
    example = torch.zeros(1, *shape)
    pruner = tp.pruner.MagnitudePruner(
        pruned, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, round_to=step, ignored_layers=output_layers(pruned, example),
    )
    pruner.step()
    return pruned.eval()


def run_uniform(model, profiler: Profiler, budget_ms: float, step: int, opset: int):
    """Smallest ratio (least pruning) whose measured latency meets the budget."""
    for ratio in np.arange(0.05, 0.96, 0.05):
        candidate = uniform_prune(model, float(ratio), step, SHAPE)
        blob = export_onnx_bytes(candidate, (1, *SHAPE), opset)
        stats, _ = profiler.latency(f"bench-uniform-{ratio:.2f}-{blob_digest(blob)}", (1, *SHAPE), lambda: blob, fresh=True)
        if stats.median_ms <= budget_ms:
            return candidate, float(ratio)
    raise RuntimeError("no uniform ratio meets the budget")


def finetune(student, teacher, data, args, description: str) -> None:
    """The prune job's default fine-tune (LR 0.01, KD alpha 0.5 at T = 4, same seed)."""
    train(student, data.train, args.finetune_epochs, lr=0.01, seed=args.seed, teacher=teacher, kd_alpha=0.5, kd_temperature=4.0, description=description)
    student.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet18")
    ap.add_argument("--budgets", default="0.7,0.5", help="fractions of the unpruned median latency")
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--train-epochs", type=float, default=5.0, help="epochs the unpruned models are trained (once, cached; default 5)")
    ap.add_argument("--finetune-epochs", type=float, default=1.0)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ceiling", action="store_true", help="skip the unpruned model's own fine-tune (the accuracy ceiling row)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--smoke", action="store_true", help=f"a tiny residual net on sklearn's digits at 3x16x16, one budget, 4 candidates ({SMOKE_NOTE})")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        return _run(args, Path(work))


def _run(args, work: Path) -> int:
    global SHAPE, DATA
    weights_folder, settings = None, {}
    if args.smoke:
        SHAPE, DATA, weights_folder = (3, 16, 16), "digits", work
        args.models, args.budgets, args.train_epochs, args.finetune_epochs, args.population, args.generations = SMOKE_MODEL, "0.7", 1.0, 0.05, 4, 1
        args.target = smoke_profile_file(args.target, work)
        settings = dict(holdout=100, refine_top=1, refine_epochs=0.01, widen_passes=0, progress=False)
        print(SMOKE_NOTE)
    profile = load_profile(args.target)
    data = load_data(DATA, input_shape=SHAPE, seed=args.seed, **({"holdout": 100} if args.smoke else {}))
    rows = []
    for name in args.models.split(","):
        weights = trained_weights(name, args.train_epochs, args.seed, weights_folder)
        model, _ = load_model(model_spec(name), num_classes=10, weights=str(weights))
        full_bytes = export_onnx_bytes(model, (1, *SHAPE), profile.opset)
        rows.append({
            "model": name, "budget": "-", "method": "unpruned", "latency_ms": None, "meets": None,
            "accuracy": onnx_accuracy(full_bytes, data.test), "macs": macs_and_params(model, SHAPE)[0], "search_s": 0.0,
            "note": f"trained {args.train_epochs:g} epoch(s)",
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if not args.no_ceiling:
            # The same fine-tune given to the unpruned model: no pruned network is expected to beat it.
            ceiling = copy.deepcopy(model)
            finetune(ceiling, model, data, args, "fine-tune unpruned")
            rows.append({
                "model": name, "budget": "-", "method": "unpruned+ft", "latency_ms": None, "meets": None,
                "accuracy": onnx_accuracy(export_onnx(ceiling, (1, *SHAPE), profile.opset, {}), data.test),
                "macs": rows[-1]["macs"], "search_s": 0.0, "note": "same fine-tune: the ceiling",
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for fraction in (float(b) for b in args.budgets.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                report = run_prune(prune_config(
                    model=model_spec(name), weights=str(weights), num_classes=10, data=DATA,
                    input_shape="x".join(map(str, SHAPE)), target=args.target, speedup=1 / fraction, population=args.population,
                    generations=args.generations, finetune_epochs=args.finetune_epochs, out=f"{tmp}/out", seed=args.seed, **settings,
                ))
                ours_bytes = Path(f"{tmp}/out/model.onnx").read_bytes()
            budget = report["budget_ms"]
            profiler = Profiler(profile)
            # The unpruned model's cache key as the prune job computed it: same anchor, same units.
            space = ChannelSpace(model, SHAPE, profile.channel_step)
            profiler.set_reference(space.arch_key(space.widths_from_indices(space.full_indices())), (1, *SHAPE), full_bytes)
            t = time.perf_counter()
            uniform, ratio = run_uniform(model, profiler, budget * 0.97, profile.channel_step, profile.opset)
            uniform_search_s = time.perf_counter() - t
            finetune(uniform, model, data, args, "fine-tune uniform")
            uniform_bytes = export_onnx(uniform.eval(), (1, *SHAPE), profile.opset, {})
            # The same protocol for both final models: fresh sessions, each timed in blocks alternating
            # with the unpruned model, the two models' sessions alternating too (A B A B ...), so
            # a burst of other tenants' load on this shared VM hits both alike.
            lat = time_alternating(profiler, {"edgeprune": ours_bytes, "uniform": uniform_bytes}, (1, *SHAPE), 2 if args.smoke else FINAL_SESSIONS)
            profiler.close()
            for method, blob, macs, search_s, note in (
                ("edgeprune", ours_bytes, report["pruned"]["macs"], report["phases"]["search_s"],
                 f"session spread {report['rounds'][-1]['confirmation']['session_spread']:.1%}"),
                ("uniform", uniform_bytes, macs_and_params(uniform, SHAPE)[0], uniform_search_s, f"ratio {ratio:.2f}"),
            ):
                rows.append({
                    "model": name, "budget": f"{fraction:g}x = {budget:.4f} ms", "method": method,
                    "latency_ms": float(lat[method]), "meets": bool(lat[method] <= budget),
                    "accuracy": onnx_accuracy(blob, data.test), "macs": int(macs), "search_s": search_s, "note": note,
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{'model':<18}{'budget':<22}{'method':<11}{'latency ms':>11}{'meets':>7}{'test acc':>10}{'MMACs':>9}{'search s':>10}  note")
    for r in rows:
        latency = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.4f}"
        meets = "-" if r["meets"] is None else str(r["meets"])
        print(f"{r['model']:<18}{r['budget']:<22}{r['method']:<11}{latency:>11}{meets:>7}{r['accuracy']:>10.2%}{r['macs'] / 1e6:>9.2f}{r['search_s']:>10.0f}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
