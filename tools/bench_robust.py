"""Robust pruning on MobileNetV2 / Fashion-MNIST (3×32×32) at 0.5× the measured latency.

    python tools/bench_robust.py                 # about an hour on a 2-core VM
    python tools/bench_robust.py --work DIR      # keep and reuse the runs' folders in DIR
    python tools/bench_robust.py --smoke         # a tiny residual net on sklearn's digits, every row (seconds)

Rows, each measured in this one run, every file re-timed in alternating fresh sessions with the
unpruned model (ratios, not absolute times): the unpruned model; (a) accuracy-only search, plain
fine-tune; (b) accuracy-only search, adversarial fine-tune; (c) accuracy + latency + robustness
search, adversarial fine-tune; (e) an ensemble of 3 networks from the front of a run at a third
of the budget, fine-tuned adversarially, held to (c)'s budget as a whole. Clean accuracy on the
whole test split, robust accuracy under PGD (L∞, 8/255, 10 steps of 2/255, random start) on
1000 test images, both in torch. The base model is trained from scratch: 1 epoch clean, then a
short adversarial training (robust pruning starts from a robust network, as CCSRP's does).

Then the shared adversarial set's ranking against a per-candidate PGD attack: Spearman's rho of
robust accuracy on round 1's shared set vs on a PGD attack on each candidate itself, over the
same held-out images, for the (c) run's front plus random widths.
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
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile_file  # noqa: E402
from timing import time_alternating  # noqa: E402

from edgeprune.tasks.data import load_data  # noqa: E402
from edgeprune.jobs.ensemble import SoftmaxEnsemble, LogProbabilities  # noqa: E402
from edgeprune.exporters.onnx import export_onnx  # noqa: E402
from edgeprune.tasks.models import load_model  # noqa: E402
from edgeprune.api.settings import prune_config  # noqa: E402
from edgeprune.jobs.prune import run_prune  # noqa: E402
from edgeprune.problem.pruning import recalibrate_bn  # noqa: E402
from edgeprune.profiling.cache import default_cache_path  # noqa: E402
from edgeprune.profiling.profiler import Profiler  # noqa: E402
from edgeprune.space.pruned import load_pruned  # noqa: E402
from edgeprune.problem.robustness import Attack, RobustPruning, accuracy_on, pgd  # noqa: E402
from edgeprune.space.channels import ChannelSpace, macs_and_params  # noqa: E402
from edgeprune.profiling.targets import load_profile  # noqa: E402
from edgeprune.tasks.task import Classification, Recipe  # noqa: E402
from edgeprune.tasks.training import evaluate, train  # noqa: E402

SHAPE = (3, 32, 32)
MODEL = "torchvision:mobilenet_v2"
DATA = "fashion-mnist"
HOLDOUT = 2000
TARGET = "x86-cpu"
# Held-out images each sub-net attacks for the shared set (5 sub-nets: 1500 adversarial images).
SHARED_SAMPLES = 300
TEST_SAMPLES = 1000
SEARCH = dict(population=12, generations=6, patience=2, refine_top=3, refine_epochs=0.05, widen_passes=1)
ROBUST: dict = {}  # settings of the runs that measure robustness (b, c, d)
SUBNETS: dict = {}  # and of those with the robustness objective (c, d)
ATTACK = Attack()  # PGD as the prune's defaults (--smoke: 2 steps)


def _side() -> str:
    return "x".join(map(str, SHAPE))


def base_weights(clean_epochs: float, adv_epochs: float, seed: int, folder: Path | None = None) -> Path:
    """MobileNetV2 trained clean, then adversarially (half of each batch PGD), cached."""
    name = "mobilenet_v2" if MODEL == "torchvision:mobilenet_v2" else f"{MODEL.replace(':', '-')}-{DATA}-{_side()}"
    path = (folder or default_cache_path().parent / "bench-robust") / f"{name}-e{clean_epochs:g}-adv{adv_epochs:g}-s{seed}.pt"
    if path.exists():
        print(f"reusing {path}")
        return path
    torch.manual_seed(seed)
    data = load_data(DATA, input_shape=SHAPE, holdout=HOLDOUT, seed=seed)
    model, _ = load_model(MODEL, num_classes=10)
    train(model, data.train, clean_epochs, lr=0.05, seed=seed, description="train clean")
    if adv_epochs > 0:
        robust = RobustPruning(ATTACK, data, seed=seed)
        train(model, data.train, adv_epochs, lr=0.02, seed=seed + 1, description="train adversarially", adversary=robust.adversary(), adv_ratio=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def prune(out: Path, weights: Path, args, **overrides) -> dict:
    if (out / "report.json").exists():
        print(f"reusing {out}")
        return json.loads((out / "report.json").read_text())
    settings = dict(
        model=MODEL, weights=str(weights), num_classes=10, data=DATA, input_shape=_side(), target=TARGET,
        speedup=2.0, **SEARCH, holdout=HOLDOUT, finetune_epochs=args.finetune_epochs, seed=args.seed, out=str(out),
        cache=str(args.work / "latency.sqlite"), progress=args.progress,
    )
    robust = overrides.get("adv_finetune") or "robustness" in overrides.get("objectives", "")
    return run_prune(prune_config(**(settings | (ROBUST if robust else {}) | overrides)))


def ceiling(unpruned, data, args):
    """The unpruned model given the same adversarial fine-tune as (b) and (c): what pruning could
    at best keep (cached in the work folder)."""
    path = args.work / "ceiling.pt"
    model = copy.deepcopy(unpruned)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    robust = RobustPruning(ATTACK, data, seed=args.seed)
    task = Classification(data, Recipe(0.01, 128, 0.5, 4.0, args.progress, robust.adversary(), 0.5), seed=args.seed)
    task.fine_tune(model, unpruned, args.finetune_epochs, args.seed, "fine-tune unpruned (ceiling)")
    torch.save(model.state_dict(), path)
    return model.eval()


def spearman(report: dict, weights: Path, args, samples: int = 12) -> dict:
    """Shared-set robust accuracy vs a PGD attack on each candidate, on the same held-out images."""
    data = load_data(DATA, input_shape=SHAPE, holdout=HOLDOUT, seed=args.seed)
    model, spec = load_model(MODEL, num_classes=10, weights=str(weights))
    profile = load_profile(TARGET)
    space = ChannelSpace(model, SHAPE, profile.channel_step, model_spec=spec)
    robust = RobustPruning(ATTACK, data, samples=SHARED_SAMPLES, seed=args.seed, progress=args.progress)
    calib = data.train.subset(512, seed=args.seed)
    batches = [x for x, _ in calib.batches(128)]
    calibrate = lambda m: recalibrate_bn(m, batches)  # noqa: E731
    shared = robust.round_set(1, space, calibrate, None)
    x, y = next(data.holdout.subset(SHARED_SAMPLES, seed=args.seed + 1).batches(SHARED_SAMPLES))
    names = [g.name for g in space.groups]
    rng = np.random.default_rng(args.seed)
    widths = [[p["widths"][n] for n in names] for p in report["pareto"]][: samples // 2]
    while len(widths) < samples:
        widths.append([int(rng.choice(g.options)) for g in space.groups])
    shared_acc, own_acc = [], []
    for i, w in enumerate(widths):
        cand = calibrate(space.shrink(space.plan(w)))
        shared_acc.append(shared.measure(cand))
        own_acc.append(accuracy_on(cand, pgd(cand, x, y, robust.attack, robust.norm, args.seed + i, 10), y))
        print(f"  candidate {i + 1}/{len(widths)}: shared set {shared_acc[-1]:.3f}, own PGD {own_acc[-1]:.3f}")
    rho = spearmanr(shared_acc, own_acc)
    return {"candidates": len(widths), "rho": float(rho.statistic), "p": float(rho.pvalue), "shared": shared_acc, "own": own_acc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--clean-epochs", type=float, default=1.0)
    ap.add_argument("--adv-epochs", type=float, default=0.3, help="adversarial training of the base model (default 0.3 epoch)")
    ap.add_argument("--finetune-epochs", type=float, default=0.3)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--smoke", action="store_true",
                    help=f"a tiny residual net on sklearn's digits at 3x16x16, every row, 4 candidates, 2 members, 40 attacked images ({SMOKE_NOTE})")
    args = ap.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            global MODEL, SHAPE, DATA, HOLDOUT, TARGET, SHARED_SAMPLES, TEST_SAMPLES, SEARCH, ROBUST, SUBNETS, ATTACK
            MODEL, SHAPE, DATA, HOLDOUT, SHARED_SAMPLES, TEST_SAMPLES = SMOKE_MODEL, (3, 16, 16), "digits", 100, 40, 40
            SEARCH = dict(population=4, generations=1, patience=0, refine_top=1, refine_epochs=0.01, widen_passes=0)
            ATTACK = Attack(steps=2)
            ROBUST, SUBNETS = dict(robust_test_samples=40, attack_steps=ATTACK.steps), dict(adv_subnets=2)
            TARGET = smoke_profile_file("x86-cpu", Path(folder))
            args.work, args.clean_epochs, args.adv_epochs, args.finetune_epochs, args.members, args.progress = Path(folder) / "work", 0.2, 0.05, 0.05, 2, False
            print(SMOKE_NOTE)
            return _run(args, Path(folder))
    return _run(args)


def _run(args, weights_folder: Path | None = None) -> int:
    args.work = args.work or Path(tempfile.mkdtemp(prefix="bench-robust-"))
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    weights = base_weights(args.clean_epochs, args.adv_epochs, args.seed, weights_folder)
    runs = {
        "a": prune(args.work / "a", weights, args),
        "b": prune(args.work / "b", weights, args, adv_finetune=True),
        "c": prune(args.work / "c", weights, args, adv_finetune=True, objectives="accuracy,latency,robustness", adv_samples=SHARED_SAMPLES, **SUBNETS),
    }
    budget_ms = runs["c"]["budget_ms"]
    # The ensemble's front: the same robust search at a third of the budget, members fine-tuned by `ensemble`.
    # --smoke: a looser budget and a larger population, so that the tiny net's front holds the members.
    front = dict(speedup=1.5, population=8) if args.smoke else dict(speedup=2.0 * args.members)
    prune(args.work / "d", weights, args, **front, adv_finetune=True, objectives="accuracy,latency,robustness", adv_samples=SHARED_SAMPLES, **SUBNETS,
          finetune_epochs=0.0, refine_epochs=0.0, widen_passes=0)
    if not (args.work / "d" / "ensemble" / "ensemble.json").exists():
        from edgeprune.jobs.ensemble import EnsembleConfig, run_ensemble

        # --smoke: the tiny net's front at a loose budget cannot fit (c)'s; a budget it fits, the same code path.
        together = budget_ms * 2 * args.members if args.smoke else budget_ms
        run_ensemble(EnsembleConfig(str(args.work / "d"), members=args.members, budget_ms=together, weights=str(weights),
                                    finetune_epochs=args.finetune_epochs, cache=str(args.work / "latency.sqlite"), progress=args.progress,
                                    robust_test_samples=TEST_SAMPLES, trust_model_code=args.smoke))

    data = load_data(DATA, input_shape=SHAPE, holdout=HOLDOUT, seed=args.seed)
    robust = RobustPruning(ATTACK, data, test_samples=TEST_SAMPLES, seed=args.seed, progress=args.progress)
    unpruned, _ = load_model(MODEL, num_classes=10, weights=str(weights))
    models = {"unpruned": unpruned.eval()}
    for key in ("a", "b", "c"):
        # --smoke's model is a factory in tools/smoke.py; its plans are this run's own, in its temporary folder.
        models[key] = load_pruned(args.work / key / "plan.json", args.work / key / "state_dict.pt", trust_code=args.smoke)
    models["ceiling"] = ceiling(unpruned, data, args)
    folder = args.work / "d" / "ensemble"
    members = [load_pruned(folder / f"member-{i}.plan.json", folder / f"member-{i}.state_dict.pt", trust_code=args.smoke) for i in range(1, args.members + 1)]
    models["ensemble"] = SoftmaxEnsemble(members).eval()

    profile = load_profile(TARGET)
    shape = (profile.batch, *SHAPE)
    files = {name: export_onnx(m, shape, profile.opset) for name, m in models.items()}
    profiler = Profiler(profile, use_cache=False)
    profiler.set_reference("bench-robust-unpruned", shape, files["unpruned"], recheck=False)
    latency = time_alternating(profiler, files, shape, tag="bench-robust")
    profiler.close()

    rows = []
    labels = {
        "unpruned": "unpruned (adversarially trained base)",
        "ceiling": "unpruned + the same adversarial fine-tune",
        "a": "(a) accuracy search, plain fine-tune",
        "b": "(b) accuracy search, --adv-finetune",
        "c": "(c) accuracy+robustness search, --adv-finetune",
        "ensemble": f"(e) ensemble of {args.members} from a 1/{args.members}-budget robust front",
    }
    for name, model in models.items():
        attacked = LogProbabilities(model) if name == "ensemble" else model
        rows.append({
            "name": name, "label": labels[name], "ratio": latency[name] / latency["unpruned"],
            "accuracy": evaluate(model, data.test), "robust_accuracy": robust.test_accuracy(attacked),
            "macs": sum(macs_and_params(m, SHAPE)[0] for m in members) if name == "ensemble" else macs_and_params(model, SHAPE)[0],
        })
        print(f"scored {name}")
    rank = spearman(runs["c"], weights, args, samples=4 if args.smoke else 12)

    print(f"\n{MODEL}, {DATA} {_side()}, {TARGET if not args.smoke else 'x86-cpu (smoke protocol)'}, budget 0.5x the unpruned model; fine-tune {args.finetune_epochs:g} epoch "
          f"(KD); PGD Linf 8/255, 10 steps, 2/255; {time.perf_counter() - t0:.0f} s")
    print(f"{'model':<52}{'x unpruned':>11}{'meets':>7}{'test acc':>10}{'robust acc':>12}{'MMACs':>8}")
    for r in rows:
        meets = "-" if r["name"] in ("unpruned", "ceiling") else ("yes" if r["ratio"] <= 0.5 else "no")
        print(f"{r['label']:<52}{r['ratio']:>11.3f}{meets:>7}{r['accuracy']:>10.2%}{r['robust_accuracy']:>12.2%}{r['macs'] / 1e6:>8.2f}")
    by = {r["name"]: r for r in rows}
    print(f"(c) - (b): robust {100 * (by['c']['robust_accuracy'] - by['b']['robust_accuracy']):+.2f} pp, "
          f"clean {100 * (by['c']['accuracy'] - by['b']['accuracy']):+.2f} pp (goal: robust >= +2 pp, clean within 1 pp)")
    best = max((by[k] for k in ("a", "b", "c") if by[k]["ratio"] <= 0.5), key=lambda r: r["robust_accuracy"] + r["accuracy"], default=None)
    if best is not None:
        print(f"ensemble - best single in budget ({best['name']}): clean {100 * (by['ensemble']['accuracy'] - best['accuracy']):+.2f} pp, "
              f"robust {100 * (by['ensemble']['robust_accuracy'] - best['robust_accuracy']):+.2f} pp")
    print(f"shared-set ranking vs per-candidate PGD: Spearman rho {rank['rho']:.3f} (p {rank['p']:.2g}) over {rank['candidates']} candidates")
    (args.work / "bench_robust.json").write_text(json.dumps({"rows": rows, "spearman": rank}, indent=2))
    print(f"runs in {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
