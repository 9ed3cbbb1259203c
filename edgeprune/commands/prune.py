"""``edgeprune prune``: search, prune, fine-tune and export a model for a target.

Only the command line lives here: its options parse into the config that ``edgeprune.prune()``
runs too (:func:`edgeprune.api.prune.run_config`), imported when the command runs, not when the
parser is built (the job imports torch).
"""

from __future__ import annotations

import argparse

from edgeprune.select.budget import DEFAULT_POLICY, percent
from edgeprune.commands.args import add_cache_args, add_data_args, add_model_args, add_progress_args, from_args
from edgeprune.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="search, prune, fine-tune and export a model for a target (the default command)")
    add_model_args(p, optional=True)
    p.add_argument("--task", default="classification", help="what the model is pruned for: classification (default: top-1 on --data); detection (a yolo: model on --data yolo:PATH/data.yaml, scored by ultralytics' mAP, fine-tuned by its trainer; needs edgeprune[yolo]); or package.module:factory, your own task object with example_input(), calibration_batches(), score(model) in [0, 1] and optionally fine_tune(model, teacher, epochs) and test_score(model), which brings its own data, so --data and the fine-tune recipe flags do not apply (importing it runs its code; see docs/usage.md)")
    p.add_argument("--yolo-head", choices=("auto", "end2end", "dense"), default="auto", help="with --task detection: the output the detector ships, is timed and scored with: end2end, the NMS-free [1, max_det, 6] of a head with a one-to-one branch (YOLO26; ultralytics' export nms=False), or dense, [1, 4 + classes, anchors] with NMS still to run; auto (default): end2end where the head has that branch, else dense")
    p.add_argument("--detection-metric", choices=("mAP50-95", "mAP50"), default="mAP50-95", help="with --task detection: the score candidates are ranked by and the report gives (default mAP50-95)")
    p.add_argument("--target", default="x86-cpu", help="target profile name or YAML path (see `edgeprune targets`; default x86-cpu)")
    add_data_args(p)
    b = p.add_mutually_exclusive_group()
    b.add_argument("--budget-ms", type=float, help="latency budget: median ms on the target")
    b.add_argument("--speedup", type=float, help="budget = measured baseline median / X")
    p.add_argument("--max-memory-mb", type=float, help="memory budget too: the pick's peak memory for one inference in the target's runtime (MiB, measured in a fresh process per architecture: loading, warm-up and one run) must stay within it; ONNX Runtime, OpenVINO, LiteRT and ExecuTorch targets on this host")
    p.add_argument("--population", type=int, default=16, help="GA population (default 16)")
    p.add_argument("--generations", type=int, default=8, help="GA generations (default 8)")
    p.add_argument("--patience", type=int, default=0, help="stop the search early after N generations in a row that improve neither the best feasible accuracy nor the hypervolume (default 0: run every generation)")
    p.add_argument("--strategy", choices=("nsga2", "steady-state", "coevolution"), default="nsga2", help="nsga2: multi-objective GA over all groups (default); steady-state: the same GA, asynchronous: a new candidate as soon as any measurement completes, as many in flight as --agents has agents (for farms larger than the population); coevolution: CCSRP-style EA per group, --population = subpopulation d, --generations = G")
    p.add_argument("--encoding", choices=("width", "mask"), default="width", help="genome: width = kept count per group (default); mask = one bit per channel with CCEP's ratio-bounded bit-flip mutation")
    p.add_argument("--objectives", default="accuracy,latency", help="what the search trades off, comma-separated: accuracy, robustness (accuracy on a shared PGD adversarial set; at least one of the two), latency, macs, memory (peak MiB of one inference in the target's runtime, measured); the latency budget is a constraint whatever is named; the pick ranks by accuracy, or by (accuracy + robust accuracy) / 2 with robustness (default accuracy,latency)")
    p.add_argument("--mode", choices=("channels", "head", "features"), default="channels", help="what the search removes: channels (default: every prunable channel group); head: only the neurons of the fully-connected head of a transfer-learned model (EvoPruneDeepTL); features: only the backbone features the head reads, which removes the last conv channels with them (train the head first: edgeprune train --freeze-backbone)")
    p.add_argument("--depth", action="store_true", help="also search depth: one keep/drop gene per residual block whose input and output shapes match (torchvision MobileNetV2, ResNet, RegNet, EfficientNet, MnasNet), so budgets below what channels alone reach become reachable; report.json names the dropped blocks")
    p.add_argument("--no-screen", action="store_true", help="measure every candidate; by default the latency surrogate (per-layer where the runtime gives per-node times, else fitted to MACs per generation) skips candidates it predicts far over the budget once its recent error is ≤ 10%%")
    p.add_argument("--rounds", type=int, default=1, help="prune → fine-tune → search again from the fine-tuned model, T times; budgets step down geometrically (default 1)")
    p.add_argument("--resume", metavar="OUT_DIR", help="continue an interrupted run from OUT_DIR.checkpoint (no other options needed)")
    p.add_argument("--trust-model-code", action="store_true", help="with --resume: allow the checkpoint's model when it is a model file (unpickled) or package.module:factory (imported); torchvision: models never need it")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tune epochs of the picked model, may be fractional (default 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune peak learning rate, cosine schedule (default 0.01)")
    p.add_argument("--refine-top", type=int, default=6, help=f"how many of the most accurate feasible candidates (re-measured within {percent(1 - DEFAULT_POLICY.search_margin)} of the budget) get a short fine-tune before the pick (default 6)".replace("%", "%%"))
    p.add_argument("--widen-passes", type=int, default=3, help=f"passes that widen the pick one grid step per group while it measures within {percent(1 - DEFAULT_POLICY.widen_margin)} of the budget, spending at most the measurements and the time the search did; 0 keeps the pick as searched (default 3)".replace("%", "%%"))
    p.add_argument("--refine-epochs", type=float, default=0.2, help="epochs of that short fine-tune per candidate; 0 picks by adaptive-BN accuracy alone (default 0.2)")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of distillation from the original model (default 0.5; 0 = plain labels)")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    _add_robustness_args(p)
    _add_scale_out_args(p)
    g = p.add_argument_group("weight sparsity (after the channel search)")
    g.add_argument("--sparsity", choices=("2:4",), help="2:4 semi-structured weights on every layer TensorRT can run sparse (input channels a multiple of 4): the 2 largest of every 4 kept, fine-tuned with the mask fixed, exported with the zeros; TensorRT targets build with --sparsity=enable; ONNX Runtime on a CPU runs them at dense speed")
    g.add_argument("--sparsity-epochs", type=float, default=0.5, help="with --sparsity: epochs of the fine-tune with the mask fixed (default 0.5; 0 = masks only)")
    p.add_argument("--out", default="edgeprune-out", help="output folder (replaced only when the run succeeds; default edgeprune-out)")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, GA and fine-tuning (default 0)")
    add_cache_args(p)
    add_progress_args(p)


def _add_robustness_args(p: argparse.ArgumentParser) -> None:
    from edgeprune.problem.attack import DEFAULT_ALPHA, DEFAULT_EPS, DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_SUBNETS, DEFAULT_TEST_SAMPLES

    g = p.add_argument_group("robustness (classification; PGD from adversarial-robustness-toolbox, pixel scale [0, 1])")
    g.add_argument("--attack-eps", type=float, default=DEFAULT_EPS, help="L-infinity radius of the PGD attack (default 8/255)")
    g.add_argument("--attack-steps", type=int, default=DEFAULT_STEPS, help=f"PGD iterations (default {DEFAULT_STEPS})")
    g.add_argument("--attack-alpha", type=float, default=DEFAULT_ALPHA, help="PGD step size (default 2/255)")
    g.add_argument("--adv-samples", type=int, default=DEFAULT_SAMPLES, help=f"held-out images each sub-net attacks for the shared adversarial set (default {DEFAULT_SAMPLES})")
    g.add_argument("--adv-subnets", type=int, default=DEFAULT_SUBNETS, help=f"mutated sub-nets of the round's base network the shared set is made from (CCSRP's k, default {DEFAULT_SUBNETS})")
    g.add_argument("--adv-finetune", action="store_true", help="adversarial training in the short tunes and the final fine-tune: part of every batch is replaced by its PGD version")
    g.add_argument("--adv-ratio", type=float, default=0.5, help="with --adv-finetune: the share of each batch attacked (default 0.5)")
    g.add_argument("--robust-test-samples", type=int, default=DEFAULT_TEST_SAMPLES, help=f"test images the report's robust accuracy (PGD on each model itself) is measured on (default {DEFAULT_TEST_SAMPLES})")


def _add_scale_out_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (docs/usage.md, Scale out)")
    g.add_argument("--workers", default="local", help="where candidates' accuracy (adaptive BN, score, short tunes) is computed: local (default), ray (a Ray cluster started on this machine) or ray:ADDRESS (join one, e.g. ray:auto); needs edgeprune[ray]; same results as local")
    g.add_argument("--agents", metavar="URLS|FARM.yaml", help="time candidates on a farm of `edgeprune agent`s: comma-separated URLs, or a YAML file with 'agents:' (URLs or {url, target}); each measurement goes to a free agent of the run's fingerprint, several at once, and an agent that stops answering is taken out with its measurement re-queued; tokens come from your agents.yaml, never from the list")


def config(args: argparse.Namespace):
    """The :class:`~edgeprune.jobs.settings.PruneConfig` of a fresh run, parsed from
    :class:`~edgeprune.api.settings.PruneOptions`: every option whose name is one of its
    fields, plus the negated flags. ``--resume`` names a folder on the command line, while the
    config's ``resume`` marks a run continued from a checkpoint, so a fresh run sets it False."""
    from edgeprune.api.settings import PruneOptions

    return from_args(PruneOptions, args, progress=not args.no_progress, screen=not args.no_screen, resume=False).parse()


def _options_besides_resume(args: argparse.Namespace) -> list[str]:
    """The options given that a resumed run would not use: those whose value is not prune's default."""
    root = argparse.ArgumentParser()
    add_parser(root.add_subparsers())
    defaults = vars(root.parse_args(["prune"]))
    keep = ("model", "resume", "no_progress", "trust_model_code")
    return [f"--{k.replace('_', '-')}" for k, v in defaults.items() if k not in keep and getattr(args, k, v) != v]


def run(args: argparse.Namespace) -> int:
    """0 when the pruned model meets the budget, 1 when it does not."""
    from edgeprune.api.prune import run_config
    from edgeprune.commands.resume import resume_config

    if args.resume:
        ignored = (["the model argument"] if args.model else []) + _options_besides_resume(args)
        if ignored:
            raise UserError(
                f"--resume takes its settings from the checkpoint; drop {', '.join(ignored)} "
                "(only --no-progress and --trust-model-code apply to a resumed run)"
            )
        cfg = resume_config(args.resume, progress=not args.no_progress, trust_model_code=args.trust_model_code)
    elif args.trust_model_code:
        raise UserError("--trust-model-code only applies with --resume (a model named on the command line is trusted); drop it")
    elif not args.model:
        raise UserError("no model given; pass a model file, torchvision:NAME or package.module:factory (or --resume OUT_DIR)")
    else:
        cfg = config(args)
    return 0 if run_config(cfg).budget_met else 1
