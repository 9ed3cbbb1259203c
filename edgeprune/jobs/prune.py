"""The prune job, end to end: load → space → search → pick → fine-tune → export → report.

Everything that can be wrong with the user's input is checked before the output folder is touched;
outputs are written into a temporary sibling folder and renamed into place at the very end, so a
failed or interrupted run never leaves a half-written output folder.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.select.budget import DEFAULT_POLICY
from edgeprune.tasks.data import DataBundle
from edgeprune.errors import UserError
from edgeprune.files import staged_folder
from edgeprune.exporters.package import FP32_FILE, ExportOptions, PackageInputs, build_package, finalize
from edgeprune.report.html import write_report_html
from edgeprune.report.builder import Baseline, ExportRecord, PruneParts, Pruned, RoundRecord, Robustness, RunFacts, SearchSummary, prune_report
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.problem.memory import ProfiledMemory, require_memory_target, search_limit_mb
from edgeprune.report.layer_times import layer_shares, per_layer_table
from edgeprune.profiling.keys import graph_key
from edgeprune.profiling.memory import measure_memory
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.stats import LatencyStats
from edgeprune.progress import console
from edgeprune.report.summary import plot_pareto, print_summary, write_json
from edgeprune.jobs.kinds import Supplied, shared_attack, task_kind
from edgeprune.jobs.rounds import RoundSettings, round_budgets, run_rounds
from edgeprune.jobs.settings import PruneConfig
from edgeprune.jobs.validation import validate
from edgeprune.jobs.checkpoint import RunCheckpoint
from edgeprune.problem.pruning import PruningProblem, recalibrate_bn
from edgeprune.search.encoding import make_encoding
from edgeprune.space.channels import ChannelSpace, layer_widths, macs_and_params
from edgeprune.profiling.targets import Profile, load_profile
from edgeprune.tasks.task import Task
from edgeprune.problem.robustness import RobustPruning
from edgeprune.profiling.farm import agent_urls
from edgeprune.problem.workers import RayWorkers
from edgeprune.space.sparsity import apply, make_permanent, model_share, onnx_share


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


@dataclass(frozen=True)
class PruneOutcome:
    """What a prune hands back besides its files: report.json's content and the pruned network."""

    report: dict
    model: torch.nn.Module


def run_prune(cfg: PruneConfig) -> dict:
    """report.json's content of :func:`prune_job` (the tools' and tests' short form)."""
    return prune_job(cfg).report


def prune_job(cfg: PruneConfig, supplied: Supplied = Supplied()) -> PruneOutcome:
    """baseline → search rounds (search, select, fine-tune) → package → report and files.
    ``supplied``: the model and task the Python API hands over as objects."""
    validate(cfg)
    t0 = time.perf_counter()
    job = _load(cfg, supplied)
    try:
        return _run(job, t0)
    finally:
        job.profiler.close()  # a farm's agent threads
        if job.workers is not None:
            job.workers.close()
        job.task.close()  # e.g. detection's work folder of split lists and trainer runs


def _run(job: _Job, t0: float) -> PruneOutcome:
    cfg = job.cfg
    t = time.perf_counter()
    baseline_latency, budget_ms, baseline = _baseline(job)
    job.phases["baseline_s"] = time.perf_counter() - t
    budgets = round_budgets(baseline_latency.median_ms, budget_ms, cfg.search.rounds)
    t = time.perf_counter()
    settings = RoundSettings(cfg.search, cfg.recipe, cfg.seed, cfg.output.progress)
    rounds = run_rounds(
        settings, job.model, job.problem, budgets, DEFAULT_POLICY, job.checkpoint, lambda sp: make_encoding(cfg.search.encoding, sp),
        lambda sp: ProfiledLatency(sp, job.profiler, job.profile.opset, job.profile.batch, job.profile.model_format),
        scores_for=lambda number, sp: _round_scores(job, number, sp),
    )
    job.phases["rounds_s"] = time.perf_counter() - t
    job.phases["search_s"] = sum(r.summary["search_s"] for r in rounds)
    job.phases["finetune_s"] = sum(r.summary["finetune_s"] for r in rounds)
    t = time.perf_counter()
    final = rounds[-1]
    sparsity = _sparsify(job, final.model) if cfg.recipe.sparsity is not None else None
    pruned_acc = job.task.test_score(final.model)
    # Checked + slimmed ONNX, timed fresh next to the unpruned model, latency and fingerprint in
    # its metadata, parity and ONNX Runtime accuracy measured; manifest and card written below.
    inputs = PackageInputs.classification(job.data, cfg.output.progress) if job.data is not None else PackageInputs.for_task(job.task, final.model)
    package = build_package(
        final.model, inputs, job.profiler, final.plan.digest(),
        ExportOptions(opset=job.profile.opset, seed=cfg.seed, progress=cfg.output.progress),
        torch_accuracy=pruned_acc, reference="the unpruned model",
    )
    per_layer = _per_layer(job, final.model, package, baseline_latency)
    memory = _memory_section(job, package, budget_ms) if job.problem.memory is not None else None
    job.phases["export_s"] = time.perf_counter() - t
    job.phases["total_s"] = time.perf_counter() - t0
    if sparsity is not None:
        sparsity |= {"test_accuracy_after": pruned_acc, "onnx": onnx_share(package.fp32.blob, cfg.recipe.sparsity)}
    extra = job.task.extra_files(final.model)
    parts = _parts(job, rounds, package, (baseline, baseline_latency), budget_ms, pruned_acc, per_layer, sparsity, extra, memory)
    report = prune_report(parts, ExportRecord.of(package))
    _write_outputs(job, rounds, package, report, baseline, budget_ms, extra)
    job.checkpoint.clear()  # the run is complete: nothing left to resume
    print_summary(report, Path(cfg.output.out))
    return PruneOutcome(report, final.model)


def _sparsify(job: _Job, model: torch.nn.Module) -> dict:
    """The picked network with 2:4 weights (edgeprune.space.sparsity): magnitude masks on the layers
    TensorRT can run sparse, a fine-tune with the masks fixed, the masks folded in."""
    cfg, t = job.cfg, time.perf_counter()
    pattern, epochs = cfg.recipe.sparsity, cfg.recipe.sparsity_epochs
    before = job.task.test_score(model)
    layers = apply(model, pattern)
    if epochs > 0:
        job.task.fine_tune(model, job.model, epochs, cfg.seed, f"{pattern.name} fine-tune, mask fixed")
    make_permanent(model)
    job.phases["sparsity_s"] = time.perf_counter() - t
    if job.profile.backend != "tensorrt":
        console.print(
            f"{pattern.name} sparsity: {job.profile.backend} runs these weights at dense speed, so the latency is unchanged here; "
            "a TensorRT build with --sparsity=enable on Ampere/Orin may run them on sparse tensor cores"
        )
    return {
        "pattern": pattern.name, "method": "magnitude", "layers": layers, "epochs": epochs,
        "test_accuracy_before": before, "torch": model_share(model, pattern),
        "tensorrt_sparsity": bool(job.profile.tensorrt is not None and job.profile.tensorrt.sparsity),
    }


def _round_scores(job: _Job, number: int, space: ChannelSpace) -> tuple:
    """A later round's model scores: a shared adversarial set made from that round's base network."""
    if not job.problem.model_scores:
        return ()
    calibrate = lambda m: recalibrate_bn(m, job.task.calibration_batches())  # noqa: E731
    return (job.robust.round_set(number, space, calibrate, job.checkpoint.round_folder(number)),)


def _load(cfg: PruneConfig, supplied: Supplied) -> _Job:
    """Profile, data, model, channel space and the profiler, each checked before anything is timed."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    profile = load_profile(cfg.target)
    if cfg.recipe.sparsity is not None and profile.tensorrt is not None:
        # Engines of this run are built with --sparsity=enable (and keyed apart in the cache).
        profile = dataclasses.replace(profile, tensorrt=dataclasses.replace(profile.tensorrt, sparsity=True))
    loaded = task_kind(cfg.task.name).load(cfg, profile, supplied)
    data, task, model, spec, robust = loaded.data, loaded.task, loaded.model, loaded.spec, loaded.robust
    input_shape = tuple(task.example_input().shape[1:])
    mode = cfg.search.mode
    space = ChannelSpace(model, input_shape, profile.channel_step, model_spec=spec, depth=cfg.search.depth, mode=mode)
    if not space.groups and mode != "channels":
        what = "hidden fully-connected layer (a Linear feeding another Linear)" if mode == "head" else "convolution whose channels a fully-connected head reads"
        raise UserError(f"--mode {mode}: {cfg.model} has no {what} wider than the target's step ({profile.channel_step}); use --mode channels or a model with such a head (edgeprune.transfer:transfer_net)")
    if not space.groups:
        raise UserError(f"{cfg.model} has no prunable channel group wider than the target's step ({profile.channel_step})")
    out, scale_out = cfg.output, cfg.scale_out
    agents = agent_urls(scale_out.agents, profile.name) if scale_out.agents else None
    if _wants_memory(cfg):
        require_memory_target(profile, remote=bool(agents) or bool(profile.agent))
    profiler = Profiler(profile, cache_path=Path(out.cache) if out.cache else None, use_cache=not out.no_cache, agents=agents, warn=_warn)
    latency = ProfiledLatency(space, profiler, profile.opset, profile.batch, profile.model_format)
    address = scale_out.ray_address
    workers = None
    try:  # nothing started here outlives a failure: a farm's agent threads, a local Ray cluster
        workers = RayWorkers(address) if address is not None else None
        checkpoint = RunCheckpoint(Path(out.out))
        scores = ()
        if robust is not None and shared_attack(cfg.search.objectives):
            # Round 1's shared set: the checkpoint's on --resume, else made now and saved once the
            # checkpoint starts (_baseline); the baseline is scored on it like every candidate.
            scores = (robust.round_set(1, space, lambda m: recalibrate_bn(m, task.calibration_batches()), checkpoint.round_folder(1) if out.resume else None),)
    except BaseException:
        profiler.close()
        if workers is not None:
            workers.close()
        raise
    problem = PruningProblem(
        space, task, latency, objective_names=cfg.search.objectives, model_scores=scores, workers=workers,
        memory=ProfiledMemory(latency, profile) if _wants_memory(cfg) else None,
        max_memory_mb=search_limit_mb(cfg.max_memory_mb) if cfg.max_memory_mb is not None else math.inf,
    )
    phases = {"load_s": time.perf_counter() - t0}
    return _Job(cfg, profile, data, model, spec, space, profiler, task, problem, checkpoint, phases, robust, workers)


def _wants_memory(cfg: PruneConfig) -> bool:
    """Whether candidates' peak memory is measured: only where the run limits it or trades it off
    (each measurement starts a process)."""
    return cfg.max_memory_mb is not None or "memory" in cfg.search.objectives


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def _baseline(job: _Job) -> tuple[LatencyStats, float, object]:
    """The unpruned model's latency (the unit every later number is in) and the budget; both come
    back from the checkpoint on --resume, so a resumed search aims at exactly the same targets."""
    cfg, space, problem = job.cfg, job.space, job.problem
    console.print(f"[bold]{cfg.model}[/bold] on [bold]{job.profile.name}[/bold]: {len(space.groups)} prunable groups; measuring baseline")
    full = space.widths_from_indices(space.full_indices())
    if cfg.output.resume:
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
            f"{smallest.latency.median_ms * 1.05:.4g} ms can be met{'' if job.cfg.search.depth else ', and --depth can go further'}"
        )
    if not problem.fits_memory(smallest):
        console.print(
            f"[yellow]memory limit {cfg.max_memory_mb:g} MiB is out of reach on {job.profile.name}:[/yellow] the smallest network "
            f"channel pruning allows peaks at {smallest.memory_mb:.1f} MiB for one inference; delivering it without a search"
        )
    baseline = problem.evaluate_widths(full)
    console.print(
        f"baseline {baseline_latency.median_ms:.4f} ms (p90 {baseline_latency.p90_ms:.4f}), "
        f"held-out {job.task.metric} {baseline.accuracy:.2%}; budget {budget_ms:.4f} ms"
    )
    if not cfg.output.resume:
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


def _memory_section(job: _Job, package, budget_ms: float) -> dict:
    """report.json's ``memory``: the baseline's peak as the search measured it, the pick's measured
    now on the file the target runs (model.onnx, or the runtime's own file), judged against
    ``--max-memory-mb`` (``latency_met``: the latency verdict alone, where ``budget_met`` holds both)."""
    native = package.native if job.profile.model_format != "onnx" else None
    name, blob = (native.file, native.blob) if native is not None else (FP32_FILE, package.fp32.blob)
    pruned = measure_memory(job.profile, blob, job.problem.latency.shape)
    baseline = job.problem.memory.measure(job.space.widths_from_indices(job.space.full_indices()))
    limit = job.cfg.max_memory_mb
    met = limit is None or pruned.peak_mb <= limit
    latency_met = DEFAULT_POLICY.met(package.fp32.latency.median_ms, budget_ms)
    return {"limit_mb": limit, "met": met, "latency_met": latency_met, "file": name, "baseline": baseline.to_dict(), "pruned": pruned.to_dict()}


def _checkpoint_config(cfg: PruneConfig, spec: dict) -> dict:
    """The settings as run.json keeps them: absolute paths, since --resume may run from elsewhere."""
    config = cfg.to_dict() | {"model": spec["spec"], "weights": spec["weights"]}
    output = {k: v for k, v in config["output"].items() if k not in ("resume", "progress")}
    output["out"] = str(Path(cfg.output.out).resolve())
    if cfg.output.cache:
        output["cache"] = str(Path(cfg.output.cache).resolve())
    config["output"] = output
    for prefix in ("imagefolder:", "yolo:"):
        if cfg.task.data.startswith(prefix):
            config["task"]["data"] = prefix + str(Path(cfg.task.data.removeprefix(prefix)).resolve())
    return config


def _parts(job: _Job, rounds, package, baseline, budget_ms: float, pruned_acc: float, per_layer, sparsity, extra, memory: dict | None) -> PruneParts:
    """What the run measured, as the records report.json is built from (report/builder.py);
    ``baseline`` is the unpruned model's (candidate, latency)."""
    cfg, final = job.cfg, rounds[-1]
    base, baseline_latency = baseline
    macs, params = macs_and_params(final.model, job.space.input_shape)
    base_macs, base_params = macs_and_params(job.model, job.space.input_shape)
    final_latency = package.fp32.latency
    return PruneParts(
        run=_run_facts(job, budget_ms, final_latency, memory),
        baseline=Baseline(job.task.test_score(job.model), base.accuracy, baseline_latency, base_macs, base_params),
        pruned=Pruned(
            pruned_acc, final.picked.accuracy, final_latency, macs, params,
            layer_widths(final.model), final.plan.widths, tuple(final.plan.dropped),
        ),
        pareto=tuple(c.summary(final.space) for c in final.result.pareto),
        search=_search_summary(job, rounds),
        rounds=tuple(RoundRecord(r.number, r.summary, files=cfg.search.rounds > 1) for r in rounds),
        finetune=final.summary["finetune"],
        per_layer=per_layer,
        robustness=_robustness(job, rounds, base) if job.robust is not None else None,
        sparsity=sparsity,
        extra_files={role: name for role, (name, _) in extra.items()},
        memory=memory,
    )


def _run_facts(job: _Job, budget_ms: float, final_latency: LatencyStats, memory: dict | None) -> RunFacts:
    input_shape = job.space.input_shape
    return RunFacts(
        target=job.profile.name,
        fingerprint=job.profiler.fingerprint,
        profile=job.profile.to_dict(),
        budget_ms=budget_ms,
        budget_met=DEFAULT_POLICY.met(final_latency.median_ms, budget_ms) and (memory is None or memory["met"]),
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
            "adv_finetune": job.cfg.robust.adv_finetune,
            "adv_ratio": job.cfg.robust.adv_ratio if job.cfg.robust.adv_finetune else None,
            "shared_sets": [{"round": r.number, **s.describe()} for r in rounds for s in r.problem.model_scores],
        },
    )


def _data_section(job: _Job) -> dict:
    if job.data is not None:
        return job.data.describe()
    return job.task.describe_data(job.cfg.seed)


def _search_summary(job: _Job, rounds) -> SearchSummary:
    cfg = job.cfg
    return SearchSummary(
        strategy=cfg.search.strategy,
        mode=cfg.search.mode,
        encoding=cfg.search.encoding,
        objectives=tuple(job.problem.objective_names),
        population=cfg.search.population,
        generations=rounds[-1].result.generations,
        rounds=cfg.search.rounds,
        evaluations=job.problem.evaluations + sum(r.problem.evaluations + r.problem.restored_count for r in rounds),
        restored=sum(r.problem.restored_count for r in rounds),
        latency_measurements=job.profiler.measurements,
        surrogate_skips=sum(r.problem.screen.skips for r in rounds if r.problem.screen),
        cache_hits=job.profiler.cache_hits,
        workers=job.workers.describe() if job.workers is not None else {"kind": "local"},
        farm=job.profiler.backend.summary() if job.cfg.scale_out.agents else None,
        wall_s=job.phases["search_s"],
        seed=cfg.seed,
        history=tuple({"round": r.number, **h} for r in rounds if r.result for h in r.result.history),
    )


def _write_outputs(job: _Job, rounds, package, report: dict, baseline, budget_ms: float, extra: dict) -> None:
    """Every file of the output folder, in a staging folder renamed into place at the end."""
    cfg, final = job.cfg, rounds[-1]
    with staged_folder(Path(cfg.output.out), output=True) as tmp:
        write_json(tmp / "plan.json", final.plan.to_dict())
        torch.save(final.model.state_dict(), tmp / "state_dict.pt")
        if cfg.search.rounds > 1:  # every round's model, loadable with load_pruned like the final one
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
