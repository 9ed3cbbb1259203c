"""``edgeprune ensemble OUT_DIR``: K differently pruned networks of a run's Pareto front, fine-tuned
and exported as ONE ONNX that averages their softmax outputs (MO-EvoPruneDeepTL's ensemble).

The members run one after the other on the device, so the budget is for the whole ensemble: the
K members are chosen from the front so that their search-time latencies add up to at most the
budget, best mean quality first (accuracy, or its mean with robust accuracy where robustness was
an objective), the most different widths breaking ties. The exported file is then timed fresh,
alternating with the run's own ``model.onnx``, so its verdict is in the prune run's units and not
the CPU's drift since. Clean and robust accuracy of the ensemble and of every member are measured
on the test split, the same way as the run's report measures its pick.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgeprune.select.budget import DEFAULT_POLICY
from edgeprune.errors import UserError
from edgeprune.files import staged_folder
from edgeprune.progress import console

if TYPE_CHECKING:
    from edgeprune.problem.robustness import RobustPruning
    from edgeprune.profiling.targets import Profile
    from edgeprune.space.channels import ChannelPlan, ChannelSpace
    from edgeprune.tasks.data import DataBundle

# At most this many K-subsets of the front are enumerated: the fastest points are kept until
# C(n, K) would exceed it (n = 40 for K = 3, 23 for K = 5, 16 for K = 8).
_MAX_SUBSETS = 100_000


@dataclass
class EnsembleConfig:
    out_dir: str
    members: int = 3
    budget_ms: float | None = None
    finetune_epochs: float | None = None
    weights: str | None = None
    data: str | None = None
    target: str | None = None
    robust_test_samples: int | None = None
    trust_model_code: bool = False
    cache: str | None = None
    no_cache: bool = False
    seed: int = 0
    progress: bool = True


class SoftmaxEnsemble(nn.Module):
    """The members run in sequence on the same input; the output is the mean of their softmaxes."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).softmax(dim=1) for m in self.members]).mean(dim=0)


class LogProbabilities(nn.Module):
    """log of a probability output, so cross-entropy attacks (PGD) see it as logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp_min(1e-12).log()


def choose_members(front: list[dict], k: int, budget_ms: float) -> list[dict]:
    """The ``k`` front points whose latencies add up to at most ``budget_ms`` with the highest mean
    quality; ties go to the most different widths (sum of pairwise L1 distances)."""
    if len(front) < k:
        raise UserError(f"the run's Pareto front has {len(front)} networks, fewer than --members {k}; lower --members")
    front = sorted(front, key=lambda p: p["latency_ms"])
    n = len(front)
    while n > k and math.comb(n, k) > _MAX_SUBSETS:
        n -= 1
    front = front[:n]
    fastest = sum(p["latency_ms"] for p in front[:k])
    if fastest > budget_ms:
        raise UserError(
            f"the {k} fastest networks of the front take {fastest:.4g} ms together, over the {budget_ms:.4g} ms budget; "
            f"lower --members, raise --budget-ms, or prune a run at a smaller budget (e.g. --speedup {k * 2}) and ensemble that"
        )

    def quality(p: dict) -> float:
        robust = p.get("scores", {}).get("robustness")
        return p["accuracy"] if robust is None else (p["accuracy"] + robust) / 2

    def spread(combo) -> float:
        return sum(sum(abs(a["widths"][g] - b["widths"][g]) for g in a["widths"]) for a, b in itertools.combinations(combo, 2))

    fits = (c for c in itertools.combinations(front, k) if sum(p["latency_ms"] for p in c) <= budget_ms)
    return list(max(fits, key=lambda c: (round(sum(quality(p) for p in c) / k, 6), spread(c))))


@dataclass
class _Run:
    """The prune run an ensemble is built from, read and checked once: its folder and report, the
    settings it recorded (:func:`_run_settings`), the budget, the front, where the ensemble is
    timed, the data, the unpruned model and its channel space on the run's own grid."""

    folder: Path
    report: dict
    settings: dict
    budget_ms: float
    front: list[dict]
    profile: Profile
    data: DataBundle
    original: nn.Module
    space: ChannelSpace

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.space.groups]


def run_ensemble(cfg: EnsembleConfig) -> dict:
    """Choose, rebuild, fine-tune and export the members; time the ensemble; score everything."""
    from edgeprune.problem.attack import require_art
    from edgeprune.problem.robustness import RobustPruning

    require_art()
    run = _open_run(cfg)
    chosen = choose_members(run.front, cfg.members, run.budget_ms)
    robust = RobustPruning(run.settings["attack"], run.data, test_samples=cfg.robust_test_samples or run.settings["test_samples"],
                           seed=cfg.seed, progress=cfg.progress)
    epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else run.settings["epochs"]
    members = _fine_tuned_members(cfg, run, chosen, robust, epochs)
    ensemble = SoftmaxEnsemble([m for _, _, m in members]).eval()
    blob, check = _exported(ensemble, run, len(members), cfg.seed)
    timed, scale, single_now = _timed(cfg, run, blob, members)
    result = _result(run, members, ensemble, robust, timed, scale) | {
        "timing": {"units": "the prune run's (ratio to its model.onnx timed alternately now, times its recorded latency)",
                   "single_now_ms": single_now, "scale": scale},
        "attack": run.settings["attack"].describe(),
        "finetune_epochs": epochs,
        "target": run.profile.name,
    }
    result["ensemble"]["parity_vs_torch"] = check
    _write(run.folder / "ensemble", blob, members, result)
    _print(result)
    return result


def _open_run(cfg: EnsembleConfig) -> _Run:
    """The run's folder, checked before anything is built from it (report.json is a file anyone
    may have written), with the channel space of its model on the run's own grid."""
    from edgeprune.jobs.export import data_from_report, read_report, recorded_profile, timing_profile
    from edgeprune.space.channels import ChannelSpace
    from edgeprune.space.pruned import original_model

    folder = Path(cfg.out_dir)
    report = read_report(folder)
    _check(cfg, report)
    _check_report(folder, report)
    settings = _run_settings(report)
    budget = cfg.budget_ms if cfg.budget_ms is not None else settings["budget_ms"]
    front = _front(report)
    recorded = recorded_profile(report)  # the run's own profile: its channel step
    profile = timing_profile(cfg.target, report, cfg.trust_model_code)  # where the ensemble is timed: --target, or the recorded one (an agent only with --trust-model-code)
    data = data_from_report(report, cfg.data)
    original = _original(cfg, report, original_model)
    depth = any(name.startswith("depth:") for name in front[0]["widths"])
    # The run's own channel step: widths on its grid (--target only changes where it is timed).
    space = ChannelSpace(original, tuple(report["input_shape"]), recorded.channel_step, model_spec=report["model"], depth=depth, mode=report["search"].get("mode", "channels"))
    if any(set(p["widths"]) != {g.name for g in space.groups} for p in front):
        raise UserError("report.json's Pareto widths do not name this model's channel groups (another model or target step); prune again")
    _check_on_grid(front, space.groups)
    return _Run(folder, report, settings, budget, front, profile, data, original, space)


def _fine_tuned_members(cfg: EnsembleConfig, run: _Run, chosen: list[dict], robust: RobustPruning, epochs: float) -> list[tuple[dict, ChannelPlan, nn.Module]]:
    """``(front point, plan, network)`` of every chosen member: shrunk from the unpruned model,
    BatchNorm recalibrated, fine-tuned with the run's recipe (and its adversary, if it had one)."""
    from edgeprune.problem.pruning import recalibrate_bn
    from edgeprune.tasks.task import Classification, Recipe

    settings = run.settings
    adversary = robust.adversary() if settings["adv_finetune"] else None
    recipe = Recipe(settings["lr"], 128, settings["kd_alpha"], settings["kd_temperature"], cfg.progress, adversary, settings["adv_ratio"])
    task = Classification(run.data, recipe, seed=cfg.seed)
    members = []
    for i, point in enumerate(chosen, 1):
        widths = [point["widths"][n] for n in run.names]
        model = recalibrate_bn(run.space.shrink(run.space.plan(widths)), task.calibration_batches())
        console.print(f"member {i}/{len(chosen)}: {point['latency_ms']:.4f} ms at search time; fine-tuning {epochs:g} epoch(s)")
        if epochs > 0:
            task.fine_tune(model, run.original, epochs, cfg.seed + i, f"fine-tune member {i}/{len(chosen)}")
        members.append((point, run.space.plan(widths), model.eval()))
    return members


def _exported(ensemble: SoftmaxEnsemble, run: _Run, count: int, seed: int) -> tuple[bytes, dict]:
    """The ensemble as one ONNX file (output ``probabilities``) and its parity with torch."""
    from edgeprune.exporters.onnx import export_onnx, parity

    shape = (run.profile.batch, *run.report["input_shape"])
    blob = _named_output(export_onnx(ensemble, shape, run.profile.opset, {"edgeprune_ensemble_members": str(count)}), "probabilities")
    probe = next(run.data.test.subset(64, seed=seed).batches(64))[0]
    return blob, parity(ensemble, blob, probe)


def _timed(cfg: EnsembleConfig, run: _Run, blob: bytes, members) -> tuple[dict, float, float]:
    """``(latencies by name, scale, the run's model now)``: the ensemble and each member timed
    fresh next to the run's own model.onnx; ``scale`` turns them into the prune run's units (the
    ratio to the run's model timed now, times its recorded latency)."""
    from edgeprune.exporters.onnx import export_onnx
    from edgeprune.profiling.keys import graph_key
    from edgeprune.profiling.profiler import Profiler

    profile, shape = run.profile, (run.profile.batch, *run.report["input_shape"])
    single_blob = (run.folder / run.report["artifacts"]["onnx"]).read_bytes()
    profiler = Profiler(profile, cache_path=Path(cfg.cache) if cfg.cache else None, use_cache=not cfg.no_cache)
    try:
        console.print(f"timing the ensemble against the run's {run.report['artifacts']['onnx']} on {profile.name}, alternating fresh sessions")
        single_now = profiler.set_reference(graph_key(single_blob), shape, single_blob, recheck=False)
        timed = {"ensemble": profiler.latency(graph_key(blob), shape, lambda: blob, fresh=True, sessions=3)[0]}
        for i, (_, _, model) in enumerate(members, 1):
            member_blob = export_onnx(model, shape, profile.opset)
            timed[f"member {i}"] = profiler.latency(graph_key(member_blob), shape, lambda b=member_blob: b, fresh=True, sessions=3)[0]
    finally:
        profiler.close()
    return timed, run.settings["single_ms"] / single_now.median_ms, single_now.median_ms


def _result(run: _Run, members, ensemble: SoftmaxEnsemble, robust: RobustPruning, timed: dict, scale: float) -> dict:
    """Every member, the ensemble and the run's single pick side by side: latency in the prune
    run's units, MACs, clean and robust accuracy on the test split."""
    from edgeprune.space.channels import macs_and_params
    from edgeprune.tasks.training import evaluate

    console.print(f"scoring the ensemble and its members on the test split (clean, and PGD-{run.settings['attack'].steps} on {robust.describe()['test_samples']} images)")
    rows = []
    for i, (point, _, model) in enumerate(members, 1):
        rows.append({
            "member": i, "widths": point["widths"], "search_latency_ms": point["latency_ms"],
            "latency_ms": timed[f"member {i}"].median_ms * scale, "macs": macs_and_params(model, run.space.input_shape)[0],
            "accuracy": evaluate(model, run.data.test), "robust_accuracy": robust.test_accuracy(model),
        })
    ensemble_ms = timed["ensemble"].median_ms
    return {
        "members": rows,
        "ensemble": {
            "latency_ms": ensemble_ms * scale,
            "budget_ms": run.budget_ms,
            "budget_met": DEFAULT_POLICY.met(ensemble_ms * scale, run.budget_ms),
            # The one file against its members timed alone: 1 when running them together costs no more.
            "vs_members_summed": ensemble_ms / sum(timed[f"member {i}"].median_ms for i in range(1, len(members) + 1)),
            "accuracy": evaluate(ensemble, run.data.test),
            "robust_accuracy": robust.test_accuracy(LogProbabilities(ensemble)),
            "macs": sum(r["macs"] for r in rows),
        },
        "single": {
            "file": run.report["artifacts"]["onnx"], "latency_ms": run.settings["single_ms"],
            "accuracy": run.report["pruned"]["accuracy"], "robust_accuracy": run.report["pruned"].get("robust_accuracy"),
        },
    }


def _named_output(blob: bytes, name: str) -> bytes:
    """The file with its one output renamed (the exporter calls a classifier's output ``logits``;
    an ensemble's is the averaged probabilities)."""
    import onnx

    proto = onnx.load_from_string(blob)
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _run_settings(report: dict) -> dict:
    """The run's budget, fine-tune recipe and attack from report.json, a file anyone may have
    written: each checked like the prune command's own options (exit 2 naming the key)."""
    from edgeprune.problem.attack import Attack
    from edgeprune.untrusted import number_in, show

    def number(section: dict, key: str, default, low: float, high: float, where: str) -> float:
        value = section.get(key, default) if isinstance(section, dict) else default
        if not number_in(value, low, high):
            raise UserError(f"report.json's {where}.{key} must be a number in [{low:g}, {high:g}], got {show(value)}; prune again")
        return value

    finetune = report.get("finetune") or {}
    robustness = report.get("robustness") or {}
    attack_section = robustness.get("attack") if isinstance(robustness, dict) else None
    attack = Attack()
    if attack_section is not None:
        steps = number(attack_section, "steps", 10, 1, 1000, "robustness.attack")
        attack = Attack(number(attack_section, "eps", attack.eps, 1e-6, 1, "robustness.attack"), int(steps),
                        number(attack_section, "alpha", attack.alpha, 1e-6, 1, "robustness.attack"))
        try:
            attack.check()
        except UserError as exc:
            raise UserError(f"report.json's robustness.attack: {exc}") from None
    adv = bool(robustness.get("adv_finetune")) if isinstance(robustness, dict) else False
    return {
        "budget_ms": number(report, "budget_ms", None, 1e-9, 1e9, "report"),
        "single_ms": number((report.get("pruned") or {}).get("latency_ms") if isinstance(report.get("pruned"), dict) else None,
                            "median", None, 1e-9, 1e9, "pruned.latency_ms"),
        "epochs": number(finetune, "epochs", 1.0, 0, 1000, "finetune"),
        "lr": number(finetune, "lr", 0.01, 1e-9, 10, "finetune"),
        "kd_alpha": number(finetune, "kd_alpha", 0.5, 0, 1, "finetune"),
        "kd_temperature": number(finetune, "kd_temperature", 4.0, 1e-6, 100, "finetune"),
        "attack": attack,
        "adv_finetune": adv,
        "adv_ratio": number(robustness, "adv_ratio", 0.5, 1e-6, 1, "robustness") if adv else 0.5,
        "test_samples": int(number(robustness, "test_samples", 1000, 1, 100_000, "robustness")),
    }


def _check(cfg: EnsembleConfig, report: dict) -> None:
    if not (isinstance(cfg.members, int) and 2 <= cfg.members <= 8):
        raise UserError(f"--members must be between 2 and 8, got {cfg.members}")
    if cfg.budget_ms is not None and not (math.isfinite(cfg.budget_ms) and cfg.budget_ms > 0):
        raise UserError(f"--budget-ms must be a positive number of ms, got {cfg.budget_ms}")
    if cfg.finetune_epochs is not None and not (math.isfinite(cfg.finetune_epochs) and 0 <= cfg.finetune_epochs <= 1000):
        raise UserError(f"--finetune-epochs must be between 0 and 1000, got {cfg.finetune_epochs}")
    if (report.get("task") or {}).get("kind", "classification") != "classification":
        raise UserError("an ensemble averages class probabilities: it needs a classification run; this one was pruned for another task")
    if cfg.robust_test_samples is not None and not 1 <= cfg.robust_test_samples <= 100_000:
        raise UserError(f"--robust-test-samples must be between 1 and 100000, got {cfg.robust_test_samples}")
    search = report.get("search") if isinstance(report.get("search"), dict) else {}
    if search.get("rounds", 1) != 1:
        raise UserError("the Pareto front of a run with --rounds > 1 is on the last round's network, not the original: ensemble a one-round run")
    if search.get("encoding", "width") != "width" or search.get("strategy", "nsga2") == "coevolution":
        raise UserError("the front of a --encoding mask or --strategy coevolution run holds channel masks report.json does not keep: ensemble a run of the default search")


def _check_report(folder: Path, report: dict) -> None:
    """report.json is a file anyone may have written: checked once, before anything is built from
    it, against the schema every report is written with and then field by field for what the
    schema lets through (NaN, a zero or negative latency, a missing run model), with the rules the
    checkpoint reader uses. The run's model.onnx is checked like any model handed to a runtime."""
    from edgeprune.untrusted import Malformed
    from edgeprune.profiling.onnx_check import ModelRejected, check_model_bytes
    from edgeprune.report.schema import report_problems

    path = folder / "report.json"
    problems = report_problems(report)
    if problems:
        raise UserError(f"{path} is not a report edgeprune writes ({problems[0]}); run `edgeprune prune` again")
    try:
        _REPORT(report, "")
    except Malformed as exc:
        raise UserError(f"{path}: {exc}; run `edgeprune prune` again") from None
    onnx = folder / report["artifacts"]["onnx"]
    if onnx.is_symlink() or not onnx.is_file() or onnx.stat().st_size > _MAX_ONNX_BYTES:
        raise UserError(f"{path}: artifacts.onnx names {report['artifacts']['onnx'][:80]!r}, which is not the run's model file in {folder}; run `edgeprune prune` again")
    try:
        check_model_bytes(onnx.read_bytes())
    except ModelRejected as exc:
        raise UserError(f"{onnx} is not a model ensemble times ({exc}); run `edgeprune prune` again") from None


def _check_on_grid(front: list[dict], groups) -> None:
    """Every front point's widths are widths its group can take (a depth gene is 0 or 1)."""
    for i, point in enumerate(front):
        for g in groups:
            if point["widths"][g.name] not in g.options:
                raise UserError(
                    f"report.json's pareto[{i}].widths.{g.name[:60]} is {point['widths'][g.name]}, not one of the group's "
                    f"widths {', '.join(map(str, g.options[:12]))}{' ...' if len(g.options) > 12 else ''}; run `edgeprune prune` again"
                )


def _report_rules():
    """The fields of report.json ensemble reads, as checkpoint.py's schema rules."""
    from edgeprune.untrusted import FRACTION, POSITIVE, POSITIVE_INT, is_int, is_number, items, json_object, nullable, rule, values

    name = rule(lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a name of at most 200 characters")
    point = json_object(
        {"accuracy": FRACTION, "latency_ms": POSITIVE, "widths": values(rule(is_int, "a whole number"))},
        {"scores": values(rule(is_number, "a finite number"))},
    )
    return json_object({
        "model": json_object({"spec": name}),
        "search": json_object({}, {"rounds": POSITIVE_INT, "encoding": name, "strategy": name, "mode": name}),
        "artifacts": json_object({"onnx": rule(lambda v: isinstance(v, str), "the file name of the run's model.onnx")}),
        "pareto": items(point),
        "pruned": json_object({"accuracy": FRACTION}, {"robust_accuracy": nullable(FRACTION)}),
    })


_REPORT = _report_rules()
# A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
_MAX_ONNX_BYTES = 2 << 30


def _front(report: dict) -> list[dict]:
    front = report.get("pareto")
    ok = isinstance(front, list) and all(
        isinstance(p, dict) and isinstance(p.get("widths"), dict) and isinstance(p.get("latency_ms"), (int, float))
        and isinstance(p.get("accuracy"), (int, float)) and all(isinstance(w, int) and not isinstance(w, bool) for w in p["widths"].values())
        for p in front
    )
    if not ok:
        raise UserError("report.json's pareto is not a list of {accuracy, latency_ms, widths}; run `edgeprune prune` again")
    if not front:
        raise UserError("report.json's Pareto front is empty (no candidate met the budget); prune again with a looser budget")
    return front


def _original(cfg: EnsembleConfig, report: dict, original_model) -> nn.Module:
    """The unpruned model with its trained weights. A weights file a report names is read only
    when the user names it too (--weights): report.json is a file anyone may have written."""
    spec = report["model"]
    named = spec.get("weights")
    if named is not None and cfg.weights is None:
        raise UserError(f"report.json names the weights {str(named)[:200]}; confirm them with --weights {str(named)[:200]}")
    if named is None and cfg.weights is not None:
        raise UserError("the run used the model's own weights (report.json names none); drop --weights")
    model = original_model(spec, trust_code=cfg.trust_model_code)
    if cfg.weights is not None:
        from edgeprune.tasks.models import load_weights

        load_weights(model, cfg.weights)
    return model.eval()


def _write(target: Path, blob: bytes, members, result: dict) -> None:
    """``OUT_DIR/ensemble/``: model.onnx, ensemble.json and every member's plan and weights,
    staged in a temporary folder and renamed into place."""
    from edgeprune.report.summary import write_json

    with staged_folder(target) as tmp:
        (tmp / "model.onnx").write_bytes(blob)
        for i, (_, plan, model) in enumerate(members, 1):
            write_json(tmp / f"member-{i}.plan.json", plan.to_dict())
            torch.save(model.state_dict(), tmp / f"member-{i}.state_dict.pt")
        write_json(tmp / "ensemble.json", result)


def _print(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"ensemble of {len(result['members'])} · budget {result['ensemble']['budget_ms']:.4g} ms (members run in sequence)", title_justify="left")
    for col in ("model", "latency ms", "test accuracy", "robust accuracy (PGD)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
    single = result["single"]
    table.add_row(f"single pick ({single['file']})", f"{single['latency_ms']:.4f}", pct(single["accuracy"]), pct(single["robust_accuracy"]))
    for r in result["members"]:
        table.add_row(f"member {r['member']}", f"{r['latency_ms']:.4f}", pct(r["accuracy"]), pct(r["robust_accuracy"]))
    e = result["ensemble"]
    table.add_row("[bold]ensemble[/bold]", f"{e['latency_ms']:.4f}", pct(e["accuracy"]), pct(e["robust_accuracy"]))
    console.print(table)
    console.print(f"budget {'met' if e['budget_met'] else 'NOT met'}: ensemble {e['latency_ms']:.4f} ms against {e['budget_ms']:.4g} ms "
                  f"({e['vs_members_summed']:.2f}× its members timed alone, summed); files in ensemble/")
    if not e["budget_met"]:
        console.print("the members were chosen by their summed latencies; the one file costs more: try fewer --members, "
                      "a lower --budget-ms, or a run pruned at a smaller budget")
