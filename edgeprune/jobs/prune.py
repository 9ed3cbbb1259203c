"""The prune job, end to end: load → space → search → pick → fine-tune → export → report.

Everything that can be wrong with the user's input is checked before the output folder is touched;
outputs are written into a temporary sibling folder and renamed into place at the very end, so a
failed or interrupted run never leaves a half-written output folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.select.budget import DEFAULT_POLICY
from edgeprune.tasks.data import DataBundle, load_data
from edgeprune.errors import UserError
from edgeprune.files import foreign_entry, staged_folder
from edgeprune.exporters.package import ExportOptions, PackageInputs, build_package, finalize
from edgeprune.report.html import write_report_html
from edgeprune.report.builder import Baseline, ExportRecord, PruneParts, Pruned, RoundRecord, Robustness, RunFacts, SearchSummary, prune_report
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.report.layer_times import layer_shares, per_layer_table
from edgeprune.tasks.models import builds_without_code, check_input, load_model, parse_shape
from edgeprune.profiling.keys import graph_key
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.stats import LatencyStats
from edgeprune.progress import console
from edgeprune.report.summary import plot_pareto, print_summary, write_json
from edgeprune.jobs.rounds import round_budgets, run_rounds
from edgeprune.jobs.checkpoint import RunCheckpoint
from edgeprune.problem.pruning import DEFAULT_OBJECTIVES, PruningProblem, parse_objectives, recalibrate_bn
from edgeprune.search.encoding import make_encoding
from edgeprune.space.channels import MODES, ChannelSpace, layer_widths, macs_and_params
from edgeprune.profiling.targets import Profile, load_profile
from edgeprune.tasks.task import Classification, Recipe, Task
from edgeprune.tasks.user_task import load_task
from edgeprune.problem.attack import (
    DEFAULT_ALPHA, DEFAULT_EPS, DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_SUBNETS, DEFAULT_TEST_SAMPLES, Attack, require_art,
)
from edgeprune.problem.robustness import MAX_SAMPLES, MAX_SUBNETS, RobustPruning
from edgeprune.profiling.farm import agent_urls
from edgeprune.problem.workers import RayWorkers, parse_workers, require_ray
from edgeprune.space.sparsity import apply, make_permanent, model_share, onnx_share, parse_sparsity

# Bounds of the search's size: each network of a population is scored (and most are timed), so a
# run beyond these would take months; --population 10**9 would fill memory before the first score.
MAX_POPULATION = 1000
MAX_GENERATIONS = 1000
MAX_ROUNDS = 100
MAX_CLASSES = 100_000  # a classifier head of more outputs is no CNN pruned for an edge device



@dataclass
class PruneConfig:
    model: str
    task: str = "classification"
    target: str = "x86-cpu"
    data: str = "fashion-mnist"
    input_shape: str | None = None
    pad: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    weights: str | None = None
    budget_ms: float | None = None
    speedup: float | None = None
    population: int = 16
    generations: int = 8
    patience: int = 0
    finetune_epochs: float = 1.0
    refine_epochs: float = 0.2
    refine_top: int = 6
    widen_passes: int = 3
    lr: float = 0.01
    batch_size: int = 128
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    holdout: int = 5000
    out: str = "edgeprune-out"
    seed: int = 0
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True
    rounds: int = 1
    strategy: str = "nsga2"
    encoding: str = "width"
    objectives: str = ",".join(DEFAULT_OBJECTIVES)
    screen: bool = True
    depth: bool = False
    detection_metric: str = "mAP50-95"
    attack_eps: float = DEFAULT_EPS
    attack_steps: int = DEFAULT_STEPS
    attack_alpha: float = DEFAULT_ALPHA
    adv_finetune: bool = False
    adv_ratio: float = 0.5
    adv_samples: int = DEFAULT_SAMPLES
    adv_subnets: int = DEFAULT_SUBNETS
    robust_test_samples: int = DEFAULT_TEST_SAMPLES
    workers: str = "local"
    agents: str | None = None
    sparsity: str | None = None
    sparsity_epochs: float = 0.5
    mode: str = "channels"
    resume: bool = False

    @property
    def robust(self) -> bool:
        """Whether the run measures robustness: an objective, or adversarial fine-tuning."""
        return self.adv_finetune or "robustness" in parse_objectives(self.objectives)


def _numeric_rules(cfg: PruneConfig) -> list[tuple[str, object, bool, str]]:
    """(flag, value, ok, what it must be) for every number of the run; NaN fails every test."""
    fin = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return [
        ("--sparsity-epochs", cfg.sparsity_epochs, fin(cfg.sparsity_epochs) and cfg.sparsity_epochs >= 0, "a number of epochs, 0 or more"),
        ("--budget-ms", cfg.budget_ms, cfg.budget_ms is None or (fin(cfg.budget_ms) and cfg.budget_ms > 0), "a positive number of ms"),
        ("--speedup", cfg.speedup, cfg.speedup is None or (fin(cfg.speedup) and cfg.speedup > 1), "above 1 (a latency target faster than the original)"),
        ("--population", cfg.population, 4 <= cfg.population <= MAX_POPULATION, f"between 4 and {MAX_POPULATION}"),
        ("--generations", cfg.generations, 1 <= cfg.generations <= MAX_GENERATIONS, f"between 1 and {MAX_GENERATIONS}"),
        ("--patience", cfg.patience, cfg.patience >= 0, "0 (off) or more generations"),
        ("--rounds", cfg.rounds, 1 <= cfg.rounds <= MAX_ROUNDS, f"between 1 and {MAX_ROUNDS}"),
        ("--num-classes", cfg.num_classes, cfg.num_classes is None or 1 <= cfg.num_classes <= MAX_CLASSES, f"between 1 and {MAX_CLASSES} (or left out: the dataset's)"),
        ("--finetune-epochs", cfg.finetune_epochs, fin(cfg.finetune_epochs) and 0 <= cfg.finetune_epochs <= 1000, "between 0 and 1000"),
        ("--refine-epochs", cfg.refine_epochs, fin(cfg.refine_epochs) and 0 <= cfg.refine_epochs <= 1000, "between 0 and 1000"),
        ("--refine-top", cfg.refine_top, cfg.refine_top >= 1, "at least 1"),
        ("--widen-passes", cfg.widen_passes, cfg.widen_passes >= 0, "0 (widening off) or more"),
        ("--lr", cfg.lr, fin(cfg.lr) and 0 < cfg.lr <= 10, "a learning rate above 0 and at most 10 (e.g. 0.01)"),
        ("--kd-alpha", cfg.kd_alpha, fin(cfg.kd_alpha) and 0 <= cfg.kd_alpha <= 1, "a weight between 0 (plain labels) and 1"),
        ("--kd-temperature", cfg.kd_temperature, fin(cfg.kd_temperature) and 0 < cfg.kd_temperature <= 100, "above 0 and at most 100 (e.g. 4)"),
        ("--adv-ratio", cfg.adv_ratio, fin(cfg.adv_ratio) and 0 < cfg.adv_ratio <= 1, "the share of each batch attacked, above 0 and at most 1 (e.g. 0.5)"),
        ("--adv-samples", cfg.adv_samples, 1 <= cfg.adv_samples <= MAX_SAMPLES, f"between 1 and {MAX_SAMPLES} held-out images"),
        ("--adv-subnets", cfg.adv_subnets, 1 <= cfg.adv_subnets <= MAX_SUBNETS, f"between 1 and {MAX_SUBNETS}"),
        ("--robust-test-samples", cfg.robust_test_samples, 1 <= cfg.robust_test_samples <= MAX_SAMPLES, f"between 1 and {MAX_SAMPLES} test images"),
    ]


# Settings a --task package.module:factory brings itself: its data, preprocessing and fine-tune
# recipe; the robustness settings attack a classifier's logits on classification data.
_ROBUSTNESS = ("attack_eps", "attack_steps", "attack_alpha", "adv_finetune", "adv_ratio", "adv_samples", "adv_subnets", "robust_test_samples")
_CLASSIFICATION_ONLY = ("data", "input_shape", "pad", "mean", "std", "holdout", "lr", "batch_size", "kd_alpha", "kd_temperature", *_ROBUSTNESS)


# What --task detection takes from the classification flags: the data set, the input size, the holdout.
_DETECTION_KEEPS = ("data", "input_shape", "holdout")


def _validate(cfg: PruneConfig) -> None:
    if cfg.task != "classification":
        defaults = PruneConfig(model="")
        keeps = _DETECTION_KEEPS if cfg.task == "detection" else ()
        given = [f"--{k.replace('_', '-')}" for k in _CLASSIFICATION_ONLY if k not in keeps and getattr(cfg, k) != getattr(defaults, k)]
        if given:
            what = "ultralytics' training recipe" if cfg.task == "detection" else "its own data and training"
            raise UserError(f"--task {cfg.task} brings {what}; drop {', '.join(given)}")
    if cfg.task == "detection":
        _validate_detection(cfg)
    elif cfg.detection_metric != "mAP50-95":
        raise UserError("--detection-metric applies to --task detection; drop it")
    if (cfg.budget_ms is None) == (cfg.speedup is None):
        raise UserError("give exactly one of --budget-ms MS or --speedup X (e.g. --speedup 2)")
    for flag, value, ok, what in _numeric_rules(cfg):
        if not ok:
            raise UserError(f"{flag} must be {what}, got {value}")
    if cfg.strategy not in ("nsga2", "coevolution"):
        raise UserError(f"unknown --strategy {cfg.strategy!r}; choose nsga2 or coevolution")
    objectives = parse_objectives(cfg.objectives)
    if cfg.task != "classification" and "robustness" in objectives:
        raise UserError(f"the robustness objective attacks a classifier on classification data; --task {cfg.task} has neither: drop robustness from --objectives")
    if cfg.strategy == "coevolution" and set(objectives) not in (set(DEFAULT_OBJECTIVES), {*DEFAULT_OBJECTIVES, "robustness"}):
        raise UserError(
            "--strategy coevolution ranks by accuracy (or, with robustness, by (accuracy + robust accuracy) / 2) "
            "with fewer MACs breaking ties: use --objectives accuracy,latency or accuracy,latency,robustness"
        )
    defaults = PruneConfig(model="")
    robust_flags = [f"--{k.replace('_', '-')}" for k in _ROBUSTNESS if k != "adv_finetune" and getattr(cfg, k) != getattr(defaults, k)]
    if robust_flags and not cfg.robust:
        raise UserError(f"{', '.join(robust_flags)} apply with robustness in --objectives or with --adv-finetune; add one or drop them")
    shared_flags = [f for f in robust_flags if f in ("--adv-samples", "--adv-subnets")]
    if shared_flags and "robustness" not in objectives:
        raise UserError(f"{', '.join(shared_flags)} size the shared adversarial set of the robustness objective; add robustness to --objectives or drop them")
    if cfg.robust:
        require_art()  # before anything is loaded or timed, not at the first attack
    if cfg.adv_ratio != defaults.adv_ratio and not cfg.adv_finetune:
        raise UserError("--adv-ratio applies to --adv-finetune; add it or drop --adv-ratio")
    Attack(cfg.attack_eps, cfg.attack_steps, cfg.attack_alpha).check()
    parse_workers(cfg.workers)
    if cfg.mode not in MODES:
        raise UserError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.mode != "channels" and cfg.depth:
        raise UserError(f"--mode {cfg.mode} searches a transfer head; drop --depth")
    if cfg.sparsity is not None:
        parse_sparsity(cfg.sparsity)
        if cfg.task == "detection":
            raise UserError("--sparsity 2:4 works with classification and your own --task (ultralytics' trainer would not keep the masks); drop --sparsity")
    elif cfg.sparsity_epochs != PruneConfig(model="").sparsity_epochs:
        raise UserError("--sparsity-epochs applies with --sparsity 2:4; add it or drop --sparsity-epochs")
    if cfg.workers != "local":
        require_ray()  # before anything is loaded or timed
    if cfg.depth and (cfg.strategy != "nsga2" or cfg.encoding != "width" or cfg.rounds != 1):
        raise UserError("--depth works with --strategy nsga2, --encoding width and one round; drop --depth or those options")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; pass --out with a folder path")
    foreign = foreign_entry(out)
    if foreign:
        # The folder is replaced as a whole at the end: never do that to a folder we did not write.
        raise UserError(f"output folder {out} cannot be replaced: {foreign}; pass a new or empty --out")


def _validate_detection(cfg: PruneConfig) -> None:
    if not cfg.data.startswith("yolo:"):
        raise UserError("--task detection reads a YOLO data set: pass --data yolo:PATH/data.yaml (make one with `edgeprune data make-detection OUT`)")
    if not cfg.model.startswith("yolo:"):
        raise UserError(f"--task detection prunes ultralytics detectors: pass yolo:yolov8n.yaml (or yolo:FILE.pt) instead of {cfg.model[:80]}")
    if cfg.input_shape:
        c, h, w = parse_shape(cfg.input_shape)
        if c != 3 or h != w or h % 32:
            raise UserError(f"--input-shape {cfg.input_shape}: a YOLO input is 3xSxS with S a multiple of 32, e.g. 3x640x640")
    if cfg.depth:
        raise UserError("--depth has no depth genes for YOLO (its blocks are not torchvision's); drop --depth")


def _untrusted_settings(config: dict) -> list[str]:
    """The checkpoint settings that would run code or reach files outside the checkpoint."""
    target = str(config.get("target", ""))
    named = {
        "model": not builds_without_code(str(config["model"])),
        # A profile file is read; a shipped target that measures through an agent uploads the model
        # there: a checkpoint, like a report.json, never chooses where a model goes (export.check_recorded_agent).
        "target": target.endswith((".yaml", ".yml")) or "/" in target or os.sep in target or _measures_on_agent(target),
        "weights": config.get("weights") is not None,
        "data": str(config.get("data", "")).startswith(("imagefolder:", "yolo:")),
        "cache": config.get("cache") is not None,
        "task": config.get("task", "classification") not in ("classification", "detection"),
        # A Ray cluster's answers are unpickled here; a farm file is read; agents, even on this
        # machine, would receive the model (tokens never go where the user did not pin them).
        "workers": config.get("workers", "local") not in ("local", "ray"),
        "agents": bool(str(config.get("agents") or "").strip()),
    }
    return [f"{key} {str(config.get(key))[:120]!r}" for key, flagged in named.items() if flagged]


def _measures_on_agent(target: str) -> bool:
    """Whether the shipped target ``target`` measures through an agent (``agent:``)."""
    try:
        return load_profile(target).agent is not None
    except UserError:
        return False  # an unknown name: the resumed run refuses it with its own message


def resume_config(out: str, progress: bool = True, trust_model_code: bool = False) -> PruneConfig:
    """The settings of the interrupted run whose ``--out`` was ``out``.

    The checkpoint is a file like any other: a model it names that is not ``torchvision:`` would
    be imported or unpickled, which runs code, and a profile, weights, image folder or cache path
    it names would be read or written, and a target or agents that measure through an agent would
    receive the model; all of those need ``trust_model_code``. The output goes
    where ``--resume`` says, never where the checkpoint says.
    """
    config = RunCheckpoint(Path(out)).read_config(PruneConfig)
    untrusted = _untrusted_settings(config)
    if untrusted and not trust_model_code:
        raise UserError(
            f"the checkpoint names {', '.join(untrusted)}: resuming imports or unpickles a model, reads "
            "those files or uploads the model to an agent; add --trust-model-code if this is your own interrupted run"
        )
    config["out"] = out
    return PruneConfig(**config, resume=True, progress=progress)


@dataclass
class _Job:
    """What the steps of one prune share: the loaded inputs, the measuring side and the timings."""

    cfg: PruneConfig
    profile: Profile
    data: DataBundle | None  # None for a user task: its data is its own
    model: torch.nn.Module
    spec: dict
    space: ChannelSpace
    profiler: Profiler
    task: Task
    problem: PruningProblem  # on the original model: the baseline, then round 1
    checkpoint: RunCheckpoint
    phases: dict
    robust: RobustPruning | None = None  # robustness objective or adversarial fine-tuning
    workers: RayWorkers | None = None  # --workers ray: candidates scored on a Ray cluster


def run_prune(cfg: PruneConfig) -> dict:
    """baseline → search rounds (search, select, fine-tune) → package → report and files."""
    _validate(cfg)
    t0 = time.perf_counter()
    job = _load(cfg)
    try:
        return _run(job, t0)
    finally:
        job.profiler.close()  # a farm's agent threads
        if job.workers is not None:
            job.workers.close()
        if hasattr(job.task, "close"):
            job.task.close()  # e.g. detection's work folder of split lists and trainer runs


def _run(job: _Job, t0: float) -> dict:
    cfg = job.cfg
    t = time.perf_counter()
    baseline_latency, budget_ms, baseline = _baseline(job)
    job.phases["baseline_s"] = time.perf_counter() - t
    budgets = round_budgets(baseline_latency.median_ms, budget_ms, cfg.rounds)
    t = time.perf_counter()
    rounds = run_rounds(
        cfg, job.model, job.problem, budgets, DEFAULT_POLICY, job.checkpoint, lambda sp: make_encoding(cfg.encoding, sp),
        lambda sp: ProfiledLatency(sp, job.profiler, job.profile.opset, job.profile.batch),
        scores_for=lambda number, sp: _round_scores(job, number, sp),
    )
    job.phases["rounds_s"] = time.perf_counter() - t
    job.phases["search_s"] = sum(r.summary["search_s"] for r in rounds)
    job.phases["finetune_s"] = sum(r.summary["finetune_s"] for r in rounds)
    t = time.perf_counter()
    final = rounds[-1]
    sparsity = _sparsify(job, final.model) if cfg.sparsity is not None else None
    pruned_acc = job.task.test_score(final.model)
    # Checked + slimmed ONNX, timed fresh next to the unpruned model, latency and fingerprint in
    # its metadata, parity and ONNX Runtime accuracy measured; manifest and card written below.
    inputs = PackageInputs.classification(job.data, cfg.progress) if job.data is not None else PackageInputs.for_task(job.task, final.model)
    package = build_package(
        final.model, inputs, job.profiler, final.plan.digest(),
        ExportOptions(opset=job.profile.opset, seed=cfg.seed, progress=cfg.progress),
        torch_accuracy=pruned_acc, reference="the unpruned model",
    )
    per_layer = _per_layer(job, final.model, package, baseline_latency)
    job.phases["export_s"] = time.perf_counter() - t
    job.phases["total_s"] = time.perf_counter() - t0
    if sparsity is not None:
        pattern = parse_sparsity(cfg.sparsity)
        sparsity |= {"test_accuracy_after": pruned_acc, "onnx": onnx_share(package.fp32.blob, pattern)}
    extra = job.task.extra_files(final.model) if hasattr(job.task, "extra_files") else {}
    parts = _parts(job, rounds, package, (baseline, baseline_latency), budget_ms, pruned_acc, per_layer, sparsity, extra)
    report = prune_report(parts, ExportRecord.of(package))
    _write_outputs(job, rounds, package, report, baseline, budget_ms, extra)
    job.checkpoint.clear()  # the run is complete: nothing left to resume
    print_summary(report, Path(cfg.out))
    return report


def _sparsify(job: _Job, model: torch.nn.Module) -> dict:
    """The picked network with 2:4 weights (edgeprune.space.sparsity): magnitude masks on the layers
    TensorRT can run sparse, a fine-tune with the masks fixed, the masks folded in."""
    cfg, t = job.cfg, time.perf_counter()
    pattern = parse_sparsity(cfg.sparsity)
    before = job.task.test_score(model)
    layers = apply(model, pattern)
    if cfg.sparsity_epochs > 0:
        job.task.fine_tune(model, job.model, cfg.sparsity_epochs, cfg.seed, f"{pattern.name} fine-tune, mask fixed")
    make_permanent(model)
    job.phases["sparsity_s"] = time.perf_counter() - t
    if job.profile.backend != "tensorrt":
        console.print(
            f"{pattern.name} sparsity: {job.profile.backend} runs these weights at dense speed, so the latency is unchanged here; "
            "a TensorRT build with --sparsity=enable on Ampere/Orin may run them on sparse tensor cores"
        )
    return {
        "pattern": pattern.name, "method": "magnitude", "layers": layers, "epochs": cfg.sparsity_epochs,
        "test_accuracy_before": before, "torch": model_share(model, pattern),
        "tensorrt_sparsity": bool(job.profile.tensorrt is not None and job.profile.tensorrt.sparsity),
    }


def _round_scores(job: _Job, number: int, space: ChannelSpace) -> tuple:
    """A later round's model scores: a shared adversarial set made from that round's base network."""
    if not job.problem.model_scores:
        return ()
    calibrate = lambda m: recalibrate_bn(m, job.task.calibration_batches())  # noqa: E731
    return (job.robust.round_set(number, space, calibrate, job.checkpoint.round_folder(number)),)


def _load(cfg: PruneConfig) -> _Job:
    """Profile, data, model, channel space and the profiler, each checked before anything is timed."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    profile = load_profile(cfg.target)
    if cfg.sparsity is not None and profile.tensorrt is not None:
        # Engines of this run are built with --sparsity=enable (and keyed apart in the cache).
        profile = dataclasses.replace(profile, tensorrt=dataclasses.replace(profile.tensorrt, sparsity=True))
    if cfg.task == "classification":
        shape = parse_shape(cfg.input_shape) if cfg.input_shape else None
        data = load_data(cfg.data, input_shape=shape, pad=cfg.pad, mean=cfg.mean, std=cfg.std, holdout=cfg.holdout, seed=cfg.seed)
        model, spec = load_model(cfg.model, num_classes=cfg.num_classes or data.num_classes, weights=cfg.weights)
        check_input(model, tuple(data.preprocess.input_shape), data.num_classes)
        robust = _robust(cfg, data)
        task = Classification(data, Recipe.of(cfg, robust.adversary() if cfg.adv_finetune else None), seed=cfg.seed)
    elif cfg.task == "detection":
        from edgeprune.tasks.detection import Detection

        size = parse_shape(cfg.input_shape)[1] if cfg.input_shape else 640
        data = None
        task = Detection(cfg.data.removeprefix("yolo:"), size, cfg.holdout, cfg.seed, cfg.detection_metric)
        try:
            model, spec = load_model(cfg.model, num_classes=cfg.num_classes or task.num_classes, weights=cfg.weights)
        except BaseException:
            task.close()  # its work folder: nothing of a failed run is left behind
            raise
        model.model.names = dict(task.names)
        robust = None
    else:
        data, task, robust = None, load_task(cfg.task), None
        model, spec = load_model(cfg.model, num_classes=cfg.num_classes, weights=cfg.weights)
        task.check_model(model, profile.opset)
    input_shape = tuple(task.example_input().shape[1:])
    space = ChannelSpace(model, input_shape, profile.channel_step, model_spec=spec, depth=cfg.depth, mode=cfg.mode)
    if not space.groups and cfg.mode != "channels":
        what = "hidden fully-connected layer (a Linear feeding another Linear)" if cfg.mode == "head" else "convolution whose channels a fully-connected head reads"
        raise UserError(f"--mode {cfg.mode}: {cfg.model} has no {what} wider than the target's step ({profile.channel_step}); use --mode channels or a model with such a head (edgeprune.transfer:transfer_net)")
    if not space.groups:
        raise UserError(f"{cfg.model} has no prunable channel group wider than the target's step ({profile.channel_step})")
    agents = agent_urls(cfg.agents, profile.name) if cfg.agents else None
    profiler = Profiler(profile, cache_path=Path(cfg.cache) if cfg.cache else None, use_cache=not cfg.no_cache, agents=agents, warn=_warn)
    latency = ProfiledLatency(space, profiler, profile.opset, profile.batch)
    address = parse_workers(cfg.workers)
    workers = None
    try:  # nothing started here outlives a failure: a farm's agent threads, a local Ray cluster
        workers = RayWorkers(address) if address is not None else None
        checkpoint = RunCheckpoint(Path(cfg.out))
        scores = ()
        if robust is not None and "robustness" in parse_objectives(cfg.objectives):
            # Round 1's shared set: the checkpoint's on --resume, else made now and saved once the
            # checkpoint starts (_baseline); the baseline is scored on it like every candidate.
            scores = (robust.round_set(1, space, lambda m: recalibrate_bn(m, task.calibration_batches()), checkpoint.round_folder(1) if cfg.resume else None),)
    except BaseException:
        profiler.close()
        if workers is not None:
            workers.close()
        raise
    problem = PruningProblem(space, task, latency, objective_names=parse_objectives(cfg.objectives), model_scores=scores, workers=workers)
    phases = {"load_s": time.perf_counter() - t0}
    return _Job(cfg, profile, data, model, spec, space, profiler, task, problem, checkpoint, phases, robust, workers)


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def _robust(cfg: PruneConfig, data: DataBundle) -> RobustPruning | None:
    if not cfg.robust:
        return None
    attack = Attack(cfg.attack_eps, cfg.attack_steps, cfg.attack_alpha)
    return RobustPruning(attack, data, cfg.adv_subnets, cfg.adv_samples, cfg.robust_test_samples, cfg.seed, cfg.progress)


def _baseline(job: _Job) -> tuple[LatencyStats, float, object]:
    """The unpruned model's latency (the unit every later number is in) and the budget; both come
    back from the checkpoint on --resume, so a resumed search aims at exactly the same targets."""
    cfg, space, problem = job.cfg, job.space, job.problem
    console.print(f"[bold]{cfg.model}[/bold] on [bold]{job.profile.name}[/bold]: {len(space.groups)} prunable groups; measuring baseline")
    full = space.widths_from_indices(space.full_indices())
    if cfg.resume:
        run = job.checkpoint.read_run()
        baseline_latency = problem.latency.set_reference(full, anchor=LatencyStats.from_dict(run["anchor"]))
        budget_ms = run["budget_ms"]
    else:
        baseline_latency = problem.latency.set_reference(full)
        budget_ms = cfg.budget_ms if cfg.budget_ms is not None else baseline_latency.median_ms / cfg.speedup
    problem.reference_ms = baseline_latency.median_ms  # the hypervolume's unit
    smallest = problem.evaluate_widths(space.widths_from_indices(space.min_indices()))
    if smallest.latency.median_ms > budget_ms:
        # Not bad input but the verdict, known early: the run delivers the fastest network it can
        # (exit 1) instead of searching for one that cannot exist.
        console.print(
            f"[yellow]budget {budget_ms:.4g} ms is out of reach on {job.profile.name}:[/yellow] the smallest network "
            f"channel pruning allows measures {smallest.latency.median_ms:.4g} ms "
            f"({baseline_latency.median_ms / smallest.latency.median_ms:.2f}x faster than the unpruned "
            f"{baseline_latency.median_ms:.4g} ms); delivering it without a search. A budget of at least "
            f"{smallest.latency.median_ms * 1.05:.4g} ms can be met{'' if job.cfg.depth else ', and --depth can go further'}"
        )
    baseline = problem.evaluate_widths(full)
    console.print(
        f"baseline {baseline_latency.median_ms:.4f} ms (p90 {baseline_latency.p90_ms:.4f}), "
        f"held-out {job.task.metric} {baseline.accuracy:.2%}; budget {budget_ms:.4f} ms"
    )
    if not cfg.resume:
        job.checkpoint.start({"config": _checkpoint_config(cfg, job.spec), "budget_ms": budget_ms, "anchor": baseline_latency.to_dict()})
        for adversarial in problem.model_scores:  # made before the checkpoint existed
            folder = job.checkpoint.round_folder(1)
            folder.mkdir(parents=True, exist_ok=True)
            adversarial.save(folder / "adversarial.npz")
    return baseline_latency, budget_ms, baseline


def _per_layer(job: _Job, pruned: torch.nn.Module, package, baseline_latency: LatencyStats) -> list[dict] | None:
    """The per-layer table of report.json and the model card (None where the backend has no
    per-node profile: TensorRT, an agent)."""
    if not job.profiler.has_node_times:
        return None
    shape = job.problem.latency.shape  # what the target runs, batch included
    full = job.space.widths_from_indices(job.space.full_indices())
    before = job.problem.latency.node_times(full, job.model)
    blob = package.fp32.blob
    after = job.profiler.node_times(graph_key(blob), shape, lambda: blob)
    return per_layer_table(
        layer_shares(job.model, shape, before, baseline_latency.median_ms),
        layer_shares(pruned, shape, after, package.fp32.latency.median_ms),
    )


def _checkpoint_config(cfg: PruneConfig, spec: dict) -> dict:
    """The settings as run.json keeps them: absolute paths, since --resume may run from elsewhere."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "progress")}
    config |= {"out": str(Path(cfg.out).resolve()), "model": spec["spec"], "weights": spec["weights"]}
    if cfg.cache:
        config["cache"] = str(Path(cfg.cache).resolve())
    for prefix in ("imagefolder:", "yolo:"):
        if cfg.data.startswith(prefix):
            config["data"] = prefix + str(Path(cfg.data.removeprefix(prefix)).resolve())
    return config


def _parts(job: _Job, rounds, package, baseline, budget_ms: float, pruned_acc: float, per_layer, sparsity, extra) -> PruneParts:
    """What the run measured, as the records report.json is built from (report/builder.py);
    ``baseline`` is the unpruned model's (candidate, latency)."""
    cfg, final = job.cfg, rounds[-1]
    base, baseline_latency = baseline
    macs, params = macs_and_params(final.model, job.space.input_shape)
    base_macs, base_params = macs_and_params(job.model, job.space.input_shape)
    final_latency = package.fp32.latency
    return PruneParts(
        run=_run_facts(job, budget_ms, final_latency),
        baseline=Baseline(job.task.test_score(job.model), base.accuracy, baseline_latency, base_macs, base_params),
        pruned=Pruned(
            pruned_acc, final.picked.accuracy, final_latency, macs, params,
            layer_widths(final.model), final.plan.widths, tuple(final.plan.dropped),
        ),
        pareto=tuple(c.summary(final.space) for c in final.result.pareto),
        search=_search_summary(job, rounds),
        rounds=tuple(RoundRecord(r.number, r.summary, files=cfg.rounds > 1) for r in rounds),
        finetune=final.summary["finetune"],
        per_layer=per_layer,
        robustness=_robustness(job, rounds, base) if job.robust is not None else None,
        sparsity=sparsity,
        extra_files={role: name for role, (name, _) in extra.items()},
    )


def _run_facts(job: _Job, budget_ms: float, final_latency: LatencyStats) -> RunFacts:
    input_shape = job.space.input_shape
    return RunFacts(
        target=job.profile.name,
        fingerprint=job.profiler.fingerprint,
        profile=job.profile.to_dict(),
        budget_ms=budget_ms,
        budget_met=DEFAULT_POLICY.met(final_latency.median_ms, budget_ms),
        budget_kind="speedup" if job.cfg.speedup is not None else "absolute",
        drift=job.profiler.drift(),
        anchor_check=job.profiler.anchor_check,
        budget_policy=DEFAULT_POLICY.describe(),
        model=job.spec,
        task=job.task.describe(),
        input_shape=tuple(input_shape),
        data=_data_section(job),
        preprocess=job.data.preprocess.to_dict() if job.data is not None else {"input_shape": list(input_shape), "by": "the task"},
        phases=job.phases,
    )


def _robustness(job: _Job, rounds, baseline) -> Robustness:
    """Clean and robust accuracy side by side: the baseline's and the pick's under a PGD attack on
    each model itself (test split), and the shared-set scores the search ranked by (holdout)."""
    robust, final = job.robust, rounds[-1]
    console.print(f"measuring robust accuracy (PGD-{robust.attack.steps}, eps {robust.attack.eps:.4g}) on {robust.describe()['test_samples']} test images")
    baseline_test, pruned_test = robust.test_accuracy(job.model), robust.test_accuracy(final.model)
    ranked = "robustness" in baseline.scores
    objective = "robustness" in job.problem.objective_names
    return Robustness(
        baseline_test, pruned_test,
        baseline_holdout=baseline.scores["robustness"] if ranked else None,
        pruned_holdout_before_finetune=final.picked.scores.get("robustness", 0.0) if ranked else None,
        section=robust.describe(shared=objective) | {
            "objective": objective,
            "adv_finetune": job.cfg.adv_finetune,
            "adv_ratio": job.cfg.adv_ratio if job.cfg.adv_finetune else None,
            "shared_sets": [{"round": r.number, **s.describe()} for r in rounds for s in r.problem.model_scores],
        },
    )


def _data_section(job: _Job) -> dict:
    if job.data is not None:
        return job.data.describe()
    if hasattr(job.task, "describe_data"):
        return job.task.describe_data(job.cfg.seed)
    return {"name": f"task {job.cfg.task}", "source": job.cfg.task, "seed": job.cfg.seed}


def _search_summary(job: _Job, rounds) -> SearchSummary:
    cfg = job.cfg
    return SearchSummary(
        strategy=cfg.strategy,
        mode=cfg.mode,
        encoding=cfg.encoding,
        objectives=tuple(job.problem.objective_names),
        population=cfg.population,
        generations=rounds[-1].result.generations,
        rounds=cfg.rounds,
        evaluations=job.problem.evaluations + sum(r.problem.evaluations + r.problem.restored_count for r in rounds),
        restored=sum(r.problem.restored_count for r in rounds),
        latency_measurements=job.profiler.measurements,
        surrogate_skips=sum(r.problem.screen.skips for r in rounds if r.problem.screen),
        cache_hits=job.profiler.cache_hits,
        workers=job.workers.describe() if job.workers is not None else {"kind": "local"},
        farm=job.profiler.backend.summary() if job.cfg.agents else None,
        wall_s=job.phases["search_s"],
        seed=cfg.seed,
        history=tuple({"round": r.number, **h} for r in rounds if r.result for h in r.result.history),
    )


def _write_outputs(job: _Job, rounds, package, report: dict, baseline, budget_ms: float, extra: dict) -> None:
    """Every file of the output folder, in a staging folder renamed into place at the end."""
    cfg, final = job.cfg, rounds[-1]
    with staged_folder(Path(cfg.out), output=True) as tmp:
        write_json(tmp / "plan.json", final.plan.to_dict())
        torch.save(final.model.state_dict(), tmp / "state_dict.pt")
        if cfg.rounds > 1:  # every round's model, loadable with load_pruned like the final one
            for r in rounds:
                folder = tmp / "rounds" / f"round-{r.number}"
                folder.mkdir(parents=True)
                write_json(folder / "plan.json", r.plan.to_dict())
                torch.save(r.model.state_dict(), folder / "state_dict.pt")
        plot_pareto(
            tmp / "pareto.png",
            [c for c in final.result.candidates if not c.predicted],
            final.result.pareto,
            budget_ms,
            baseline,
            final.picked,
            f"{cfg.model} on {job.profile.name}",
            final=(package.fp32.latency.median_ms, report["pruned"]["accuracy"]),
            baseline_test=report["baseline"]["accuracy"],
            final_robust=report["pruned"].get("robust_accuracy"),
            baseline_robust=report["baseline"].get("robust_accuracy"),
        )
        for name, blob in extra.values():
            (tmp / name).write_bytes(blob)  # e.g. detection's ultralytics checkpoint
        finalize(tmp, report, package)  # model.onnx, report.json, MODEL_CARD.md, manifest.json
        write_report_html(tmp)  # report.html, drawn from the report.json and manifest.json just written
