"""Command line: parse, validate, call. Bad input → one line on stderr and exit code 2.

``edgeprune --target x86-cpu model.pt ...`` (no sub-command) means ``edgeprune prune ...``.
``--debug`` anywhere shows the traceback instead of the one-line error.
"""

from __future__ import annotations

import argparse
import sys

from edgeprune import __version__
from edgeprune.errors import UserError

COMMANDS = ("prune", "demo", "train", "profile", "targets", "cache", "agent", "export", "gate")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.5,0.5, got {text!r}") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", help="fashion-mnist | imagefolder:PATH (train/ and val/ inside) | digits (default: fashion-mnist)")
    g.add_argument("--input-shape", help="CxHxW the model takes, e.g. 3x32x32 (default: the dataset's own shape); grey is replicated to 3 channels")
    g.add_argument("--pad", action="store_true", help="zero-pad to --input-shape instead of resizing")
    g.add_argument("--mean", type=_floats, help="per-channel mean subtracted after scaling to [0,1], e.g. 0.5 or 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, help="per-channel std divided after --mean")
    g.add_argument("--holdout", type=int, default=5000, help="images held out of TRAIN to score candidates (default 5000)")


def _add_model_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("model", nargs="?" if optional else None, help="FILE saved with torch.save(model) (loading runs code from it), torchvision:NAME, or package.module:factory")
    p.add_argument("--num-classes", type=int, help="classes for torchvision:NAME / factory models (default: the dataset's)")
    p.add_argument("--weights", help="state_dict FILE for torchvision:NAME / factory models (loaded with weights_only=True)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeprune", description="Prune PyTorch CNNs for latency measured on the target device.")
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prune", help="search, prune, fine-tune and export a model for a target (the default command)")
    _add_model_args(p, optional=True)
    p.add_argument("--target", default="x86-cpu", help="target profile name or YAML path (see `edgeprune targets`; default x86-cpu)")
    _add_data_args(p)
    b = p.add_mutually_exclusive_group()
    b.add_argument("--budget-ms", type=float, help="latency budget: median ms on the target")
    b.add_argument("--speedup", type=float, help="budget = measured baseline median / X")
    p.add_argument("--population", type=int, default=16, help="GA population (default 16)")
    p.add_argument("--generations", type=int, default=8, help="GA generations (default 8)")
    p.add_argument("--strategy", choices=("nsga2", "coevolution"), default="nsga2", help="nsga2: multi-objective GA over all groups (default); coevolution: CCSRP-style EA per group, --population = subpopulation d, --generations = G")
    p.add_argument("--encoding", choices=("width", "mask"), default="width", help="genome: width = kept count per group (default); mask = one bit per channel with CCEP's ratio-bounded bit-flip mutation")
    p.add_argument("--no-screen", action="store_true", help="measure every candidate; by default the latency surrogate skips candidates it predicts far over the budget once its recent error is ≤ 10%%")
    p.add_argument("--rounds", type=int, default=1, help="prune → fine-tune → search again from the fine-tuned model, T times; budgets step down geometrically (default 1)")
    p.add_argument("--resume", metavar="OUT_DIR", help="continue an interrupted run from OUT_DIR.checkpoint (no other options needed)")
    p.add_argument("--trust-model-code", action="store_true", help="with --resume: allow the checkpoint's model when it is a model file (unpickled) or package.module:factory (imported); torchvision: models never need it")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tune epochs of the picked model, may be fractional (default 1)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune peak learning rate, cosine schedule (default 0.01)")
    p.add_argument("--refine-top", type=int, default=6, help="how many of the most accurate feasible candidates get a short fine-tune before the pick (default 6)")
    p.add_argument("--widen-passes", type=int, default=3, help="passes that widen the pick one grid step per group while it measures within 94%% of the budget; 0 keeps the pick as searched (default 3)")
    p.add_argument("--refine-epochs", type=float, default=0.2, help="epochs of that short fine-tune per candidate; 0 picks by adaptive-BN accuracy alone (default 0.2)")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of distillation from the original model (default 0.5; 0 = plain labels)")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--out", default="edgeprune-out", help="output folder (replaced only when the run succeeds; default edgeprune-out)")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, GA and fine-tuning (default 0)")
    _add_cache_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="train mobilenet_v2 on Fashion-MNIST (once), prune it to 2x faster on x86-cpu, export")
    d.add_argument("--out", default="edgeprune-demo", help="output folder (default edgeprune-demo)")
    d.add_argument("--seed", type=int, default=0)
    _add_cache_args(d)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train a model on a dataset and save its state_dict (for trying edgeprune without your own model)")
    _add_model_args(t)
    _add_data_args(t)
    t.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate, cosine schedule (default 0.05)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, help="state_dict file to write (use it with --weights)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    pr = sub.add_parser("profile", help="measure an ONNX model's latency on a target (the cache answers repeats)")
    pr.add_argument("onnx", help="ONNX file with a fixed input shape, or a symbolic batch timed at the target's batch (with --validate-surrogate: a model spec such as torchvision:mobilenet_v2)")
    pr.add_argument("--target", default="x86-cpu", help="target profile name or YAML path (default x86-cpu)")
    pr.add_argument("--repeats", type=int, default=1, help="independent measurements (fresh sessions); the median of medians is shown (default 1)")
    pr.add_argument("--json", action="store_true", help="print the stats as JSON")
    _add_cache_args(pr)
    pr.add_argument("--fresh", action="store_true", help="measure even when the cache has the model (the result is still stored if new)")
    pr.add_argument("--allow-external-data", action="store_true", help="time a model whose tensors are in separate data files (read only from the model's own folder); refused by default")
    sv = pr.add_argument_group("surrogate check (--validate-surrogate MODEL)")
    sv.add_argument("--validate-surrogate", action="store_true", help="fit the latency surrogate on random pruned variants of MODEL and print its error on others")
    sv.add_argument("--input-shape", help="CxHxW of MODEL, e.g. 3x32x32")
    sv.add_argument("--num-classes", type=int, help="classes for torchvision:NAME / factory models")
    sv.add_argument("--fit", type=int, default=40, help="variants measured with per-node times to fit the surrogate (default 40)")
    sv.add_argument("--validate", type=int, default=60, help="other variants measured to score it (default 60)")
    sv.add_argument("--seed", type=int, default=0, help="seed of the random widths (default 0)")

    sub.add_parser("targets", help="list the target profiles")

    _add_agent_parser(sub)
    from edgeprune.cache_cmd import add_parser as add_cache_parser

    add_cache_parser(sub)
    from edgeprune import export_cmd, gate

    export_cmd.add_parser(sub)
    gate.add_parser(sub)
    return parser


def _add_agent_parser(sub) -> None:
    from edgeprune import agent  # stdlib only: cheap at parse time, and the defaults live there

    ag = sub.add_parser("agent", help="run ON the device: time ONNX models sent by a search elsewhere (no torch needed)")
    ag.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other address needs --token-file)")
    ag.add_argument("--port", type=int, default=agent.DEFAULT_PORT, help=f"port (default {agent.DEFAULT_PORT}; 0 picks a free one, printed at start)")
    ag.add_argument("--token-file", help="file holding the bearer token clients must send (required off loopback)")
    ag.add_argument("--max-upload-mb", type=float, default=agent.DEFAULT_MAX_UPLOAD_MB, help=f"largest ONNX model accepted, MiB (default {agent.DEFAULT_MAX_UPLOAD_MB})")
    ag.add_argument("--max-memory-mb", type=int, default=agent.DEFAULT_MAX_MEMORY_MB, help=f"memory limit of the process that times a model, MiB (default {agent.DEFAULT_MAX_MEMORY_MB}; 0 = no limit)")
    ag.add_argument("--measure-timeout-s", type=float, default=agent.DEFAULT_MEASURE_TIMEOUT_S, help=f"longest one measurement may take before its process is killed, s (default {agent.DEFAULT_MEASURE_TIMEOUT_S:g})")
    ag.add_argument("--request-timeout-s", type=float, default=agent.DEFAULT_REQUEST_TIMEOUT_S, help=f"time a client has to send a request's headers (plus 1 s per MiB of body), s (default {agent.DEFAULT_REQUEST_TIMEOUT_S:g})")
    ag.add_argument("--max-connections", type=int, default=agent.DEFAULT_MAX_CONNECTIONS, help=f"open connections served at once; more are closed at once (default {agent.DEFAULT_MAX_CONNECTIONS})")


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", help="latency cache SQLite file (default: in the user cache folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the latency cache file")


def _normalise_argv(argv: list[str]) -> tuple[list[str], bool]:
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    first = next((a for a in argv if not a.startswith("-")), None)
    if argv and first not in COMMANDS and not {"-h", "--help", "--version"} & set(argv):
        argv = ["prune", *argv]
    return argv, debug


def _cmd_prune(args) -> int:
    from edgeprune.pipeline import PruneConfig, resume_config, run_prune

    if args.resume:
        if args.model:
            raise UserError("--resume takes its settings from the checkpoint; drop the model argument (and other options)")
        report = run_prune(resume_config(args.resume, progress=not args.no_progress, trust_model_code=args.trust_model_code))
        return 0 if report["budget_met"] else 1
    if args.trust_model_code:
        raise UserError("--trust-model-code only applies with --resume (a model named on the command line is trusted); drop it")
    if not args.model:
        raise UserError("no model given; pass a model file, torchvision:NAME or package.module:factory (or --resume OUT_DIR)")
    report = run_prune(
        PruneConfig(
            model=args.model,
            target=args.target,
            data=args.data,
            input_shape=args.input_shape,
            pad=args.pad,
            mean=args.mean,
            std=args.std,
            num_classes=args.num_classes,
            weights=args.weights,
            budget_ms=args.budget_ms,
            speedup=args.speedup,
            population=args.population,
            generations=args.generations,
            rounds=args.rounds,
            strategy=args.strategy,
            screen=not args.no_screen,
            encoding=args.encoding,
            finetune_epochs=args.finetune_epochs,
            refine_epochs=args.refine_epochs,
            refine_top=args.refine_top,
            widen_passes=args.widen_passes,
            lr=args.lr,
            kd_alpha=args.kd_alpha,
            kd_temperature=args.kd_temperature,
            holdout=args.holdout,
            out=args.out,
            seed=args.seed,
            cache=args.cache,
            no_cache=args.no_cache,
            progress=not args.no_progress,
        )
    )
    return 0 if report["budget_met"] else 1


def _cmd_demo(args) -> int:
    from edgeprune.demo import run_demo

    report = run_demo(out=args.out, seed=args.seed, cache=args.cache, no_cache=args.no_cache, progress=not args.no_progress)
    return 0 if report["budget_met"] else 1


def _cmd_train(args) -> int:
    from edgeprune.demo import train_and_save

    train_and_save(
        args.model,
        data=args.data,
        input_shape=args.input_shape,
        pad=args.pad,
        mean=args.mean,
        std=args.std,
        holdout=args.holdout,
        num_classes=args.num_classes,
        weights=args.weights,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        progress=not args.no_progress,
    )
    return 0


def _cmd_profile(args) -> int:
    from edgeprune.profile_cmd import run_profile

    return run_profile(args)


def _cmd_cache(args) -> int:
    from edgeprune.cache_cmd import run

    return run(args)


def _cmd_targets(args) -> int:
    from edgeprune.targets import list_profiles

    for profile in list_profiles():
        print(f"{profile.name:<20} step {profile.channel_step:<3} {profile.description}")
    return 0


def _cmd_export(args) -> int:
    from edgeprune.export_cmd import run

    return run(args)


def _cmd_gate(args) -> int:
    from edgeprune.gate import run  # torch-free: CI runners need only onnxruntime

    return run(args)


def _cmd_agent(args) -> int:
    from edgeprune.agent import serve  # torch-free: the agent runs on devices without PyTorch

    serve(
        args.host, args.port, args.token_file, args.max_upload_mb, max_memory_mb=args.max_memory_mb,
        measure_timeout_s=args.measure_timeout_s, request_timeout_s=args.request_timeout_s, max_connections=args.max_connections,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv, debug = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {
        "prune": _cmd_prune,
        "demo": _cmd_demo,
        "train": _cmd_train,
        "profile": _cmd_profile,
        "targets": _cmd_targets,
        "agent": _cmd_agent,
        "cache": _cmd_cache,
        "export": _cmd_export,
        "gate": _cmd_gate,
    }[args.command]
    try:
        return handler(args)
    except UserError as exc:
        if debug:
            raise
        print(f"edgeprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeprune: interrupted; no output folder was written (a prune can continue with --resume OUT_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
