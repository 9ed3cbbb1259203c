"""``edgeprune gate``: fail a CI run when a model is over its latency budget on a target.

Exit codes are the contract with CI: 0 every model within budget (and at or above its least robust
accuracy, where one is set), 1 at least one fails, 2 the input
is wrong (a bad budgets file names the line at fault). A number close to the budget is the one a
noisy measurement can flip, so a result inside the tolerance band is measured again (fresh, not
from the cache) and judged on the median of all its measurements; results clearly above or below
the budget are judged at once. Nothing here imports torch: a CI runner only needs onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeprune.select.budget import DEFAULT_POLICY
from edgeprune.errors import UserError
from edgeprune.profiling.keys import PERCENTILES, graph_key, percentile_ms
from edgeprune.profiling.targets import Profile, load_profile
from edgeprune.untrusted import Malformed, is_int, is_number, loads, number_in, show

DEFAULT_TARGET = "x86-cpu"
DEFAULT_PERCENTILE = 90
# ±5 % of the budget: about the run-to-run spread of one measurement on a shared CPU.
DEFAULT_TOLERANCE = 0.05
# Fresh measurements added to a result inside the tolerance band (the verdict is the median of 3).
REMEASURES = 2
_KEYS = ("model", "target", "percentile", "budget_ms", "tolerance", "min_robust_accuracy")
# report.json and manifest.json beside a gated model are read whole: bound them.
_MAX_SIDECAR_BYTES = 16 << 20


@dataclass
class Budget:
    """One model held to one budget on one target; ``where`` locates it for error messages."""

    model: str
    path: Path
    target: str
    percentile: int
    budget_ms: float
    tolerance: float
    where: str
    target_where: str = ""
    profile: Profile | None = None
    onnx_bytes: bytes = b""
    shape: tuple[int, ...] = ()
    # The least robust accuracy the model may have (its prune run's report.json, PGD on the test
    # split); None: robustness is not gated.
    min_robust_accuracy: float | None = None
    robust_accuracy: float | None = None

    # The two parts of the verdict, computed here only: the exit code (GateResult.passed, set by
    # _judge) and what the table, JUnit, JSON and HTML reports say (GateResult's properties) agree.
    def latency_met(self, measured_ms: float) -> bool:
        """At most the budget, equal included: the rule prune and ensemble judge a file by too."""
        return DEFAULT_POLICY.met(measured_ms, self.budget_ms)

    def robust_met(self) -> bool | None:
        """At or above min_robust_accuracy; None where robustness is not gated."""
        return None if self.min_robust_accuracy is None else self.robust_accuracy >= self.min_robust_accuracy


@dataclass
class GateResult:
    budget: Budget
    measured_ms: float
    passed: bool  # within the latency budget and, where set, at or above min_robust_accuracy
    source: str  # "cache" or "measured"
    measurements_ms: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    fingerprint_hash: str = ""
    seconds: float = 0.0

    @property
    def robust_passed(self) -> bool | None:
        return self.budget.robust_met()

    @property
    def latency_passed(self) -> bool:
        return self.budget.latency_met(self.measured_ms)

    def to_dict(self) -> dict:
        b = self.budget
        return {
            "model": b.model,
            "path": str(b.path),
            "target": b.target,
            "percentile": b.percentile,
            "budget_ms": b.budget_ms,
            "tolerance": b.tolerance,
            "measured_ms": self.measured_ms,
            "passed": self.passed,
            "source": self.source,
            "remeasured": len(self.measurements_ms) > 1,
            "measurements_ms": self.measurements_ms,
            "stats": self.stats,
            "input_shape": list(b.shape),
            "fingerprint_hash": self.fingerprint_hash,
            "min_robust_accuracy": b.min_robust_accuracy,
            "robust_accuracy": b.robust_accuracy,
            "robust_passed": self.robust_passed,
            "seconds": self.seconds,
        }


# --- input -------------------------------------------------------------------------------------


def _check_percentile(value, where: str) -> int:
    if not is_int(value) or value not in PERCENTILES:
        raise UserError(f"{where}: percentile must be one of {', '.join(map(str, PERCENTILES))}, got {show(value)}; fix it")
    return value


def _check_budget(value, where: str) -> float:
    # NaN compares false with everything and inf passes every model: both are refused.
    if not is_number(value) or value <= 0:
        raise UserError(f"{where}: budget_ms must be a positive number of milliseconds, got {show(value)}; fix it")
    return float(value)


def _check_tolerance(value, where: str) -> float:
    if not is_number(value) or not 0 <= value < 1:
        raise UserError(
            f"{where}: tolerance is a fraction of the budget in [0, 1) (0.05 = ±5 %), got {show(value)}; fix it"
        )
    return float(value)


def _check_min_robust(value, where: str) -> float | None:
    if value is None:
        return None
    if not number_in(value, 0, 1):
        raise UserError(f"{where}: min_robust_accuracy is a fraction in [0, 1] (0.6 = 60 %), got {show(value)}; fix it")
    return float(value)


def single_budget(
    model: str, budget_ms: float, target: str | None, percentile: int | None, tolerance: float | None, min_robust_accuracy: float | None = None
) -> Budget:
    """The budget given on the command line (``MODEL.onnx --budget-ms X``)."""
    return Budget(
        model=model,
        path=Path(model),
        target=target or DEFAULT_TARGET,
        percentile=_check_percentile(DEFAULT_PERCENTILE if percentile is None else percentile, "--percentile"),
        budget_ms=_check_budget(budget_ms, "--budget-ms"),
        tolerance=_check_tolerance(DEFAULT_TOLERANCE if tolerance is None else tolerance, "--tolerance"),
        where=f"model {model}",
        target_where="--target",
        min_robust_accuracy=_check_min_robust(min_robust_accuracy, "--min-robust-accuracy"),
    )


def load_budgets(
    path: str, target: str | None = None, percentile: int | None = None, tolerance: float | None = None,
    min_robust_accuracy: float | None = None,
) -> list[Budget]:
    """Parse a budgets file: a YAML list of mappings with the keys model and budget_ms, and
    optionally target, percentile, tolerance and min_robust_accuracy (else the command line's or
    the defaults).

    Errors name the file and the line of the offending entry or value (taken from YAML node marks,
    so they point at what the user wrote). Relative model and profile paths are resolved from
    the budgets file's folder, so the gate gives the same answer from any working directory.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"budgets file {path} not found; pass --budgets with a YAML file (see README, `edgeprune gate`)")
    try:
        text = file.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file; pass a YAML budgets file") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a budgets file; fix the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the syntax") from None

    def at(node: yaml.Node) -> str:
        return f"{path} line {node.start_mark.line + 1}"

    if root is None or not isinstance(root, yaml.SequenceNode) or not root.value:
        where = at(root) if root is not None else path
        raise UserError(f"{where}: expected a non-empty YAML list of budgets (- model: a.onnx\\n  budget_ms: 2.0); fix the file")
    constructor = yaml.constructor.SafeConstructor()
    budgets = []
    for entry in root.value:
        if not isinstance(entry, yaml.MappingNode):
            raise UserError(f"{at(entry)}: each budget must be a mapping with keys {', '.join(_KEYS)}; fix the entry")
        values = _entry_values(entry, at, constructor)
        model, model_at = values["model"]
        if not isinstance(model, str) or not model:
            raise UserError(f"{model_at}: model must be the path of an ONNX file, got {model!r}; fix it")
        model_path = Path(model) if Path(model).is_absolute() else file.parent / model
        _inside(file, model_path, model_at, "model")
        entry_target, target_at = _entry_target(file, values, target)
        budgets.append(
            Budget(
                model=model,
                path=model_path,
                target=entry_target,
                percentile=_check_percentile(*values.get("percentile", (DEFAULT_PERCENTILE if percentile is None else percentile, "--percentile"))),
                budget_ms=_check_budget(*values["budget_ms"]),
                tolerance=_check_tolerance(*values.get("tolerance", (DEFAULT_TOLERANCE if tolerance is None else tolerance, "--tolerance"))),
                where=model_at,
                target_where=target_at,
                min_robust_accuracy=_check_min_robust(*values.get("min_robust_accuracy", (min_robust_accuracy, "--min-robust-accuracy"))),
            )
        )
    return budgets


def _entry_values(entry: yaml.MappingNode, at, constructor) -> dict[str, tuple[object, str]]:
    """key -> (value, where it is) of one budgets entry: known keys, each once, plain scalars."""
    values: dict[str, tuple[object, str]] = {}
    for key_node, value_node in entry.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in _KEYS:
            raise UserError(f"{at(key_node)}: unknown key {key!r}; valid keys are {', '.join(_KEYS)}")
        if key in values:
            raise UserError(f"{at(key_node)}: key {key!r} appears twice in one entry; keep one")
        if not isinstance(value_node, yaml.ScalarNode):
            raise UserError(f"{at(value_node)}: {key} must be a single value, not a list or mapping; fix it")
        try:
            values[key] = (constructor.construct_object(value_node, deep=True), at(value_node))
        except yaml.YAMLError as exc:  # e.g. a !!python/... tag, which safe loading refuses
            raise UserError(f"{at(value_node)}: {key} cannot be read ({getattr(exc, 'problem', None) or exc}); write a plain value") from None
        except ValueError:  # int() refuses a number with thousands of digits
            raise UserError(f"{at(value_node)}: {key} is a number too long to read; write a plain value") from None
    for required in ("model", "budget_ms"):
        if required not in values:
            raise UserError(f"{at(entry)}: budget entry lacks {required!r}; add it")
    return values


def _entry_target(file: Path, values: dict[str, tuple[object, str]], target: str | None) -> tuple[str, str]:
    """(profile name or path, where it was given) of one entry. A path in the file is resolved
    from the file's folder and must stay inside it; a shipped name, or the command line's
    ``--target`` (relative to the working directory), is the user's own choice."""
    if "target" not in values:
        return target or DEFAULT_TARGET, "--target"
    entry_target, target_at = values["target"]
    if not isinstance(entry_target, str) or not entry_target:
        raise UserError(f"{target_at}: target must be a profile name or YAML path, got {entry_target!r}; fix it")
    if entry_target.endswith((".yaml", ".yml")) or "/" in entry_target or os.sep in entry_target:
        if not Path(entry_target).is_absolute():
            entry_target = str(file.parent / entry_target)
        _inside(file, Path(entry_target), target_at, "target profile")
    return entry_target, target_at


def _inside(budgets_file: Path, path: Path, where: str, what: str) -> None:
    """A budgets file is often someone else's (a repo, a CI artifact): it may name only files in
    its own folder, or a model of yours would be read and sent to whatever agent it names."""
    root = budgets_file.resolve().parent
    if not path.resolve().is_relative_to(root):
        raise UserError(
            f"{where}: {what} {str(path)[:200]} is outside the budgets file's folder {root}; keep models and "
            "profiles next to (or below) the budgets file, or gate a model directly: edgeprune gate MODEL.onnx --budget-ms MS"
        )


def _read_model(budget: Budget, allow_external_data: bool = False) -> tuple[bytes, tuple[int, ...]]:
    """The model's bytes and the shape to time it at (a symbolic batch at the target's batch)."""
    from edgeprune.profiling.onnx_file import load_onnx  # lazily: the CLI imports this module to build its parser

    if budget.profile.model_format != "onnx":
        return _read_runtime_file(budget)

    try:
        return load_onnx(budget.path, batch=budget.profile.batch, allow_external_data=allow_external_data)
    except UserError as exc:
        raise UserError(f"{budget.where}: {exc}") from None


def _read_runtime_file(budget: Budget) -> tuple[bytes, tuple[int, ...]]:
    """A target that runs its own format (LiteRT: .tflite, ExecuTorch: .pte) is gated on that file,
    the one prune delivers next to model.onnx, checked as the device agent checks an upload."""
    from edgeprune.profiling.onnx_check import ModelRejected  # noqa: PLC0415
    from edgeprune.profiling.pte_check import check_program_bytes  # noqa: PLC0415
    from edgeprune.profiling.tflite_check import check_tflite_bytes  # noqa: PLC0415

    fmt = budget.profile.model_format
    checks = {"tflite": check_tflite_bytes, "pte": lambda blob: check_program_bytes(blob).dims}
    if fmt not in checks or budget.path.suffix != f".{fmt}":
        raise UserError(f"{budget.where}: target '{budget.profile.name}' runs .{fmt} files, not {budget.path.name}; gate the model.{fmt} beside it")
    try:
        blob = budget.path.read_bytes()
        return blob, checks[fmt](blob)
    except OSError as exc:
        raise UserError(f"{budget.where}: cannot read {budget.path} ({exc.strerror or type(exc).__name__})") from None
    except ModelRejected as exc:
        raise UserError(f"{budget.where}: {budget.path}: {exc}") from None


def prepare(budgets: list[Budget], allow_external_data: bool = False) -> None:
    """Load every profile and model before anything is timed: bad input fails in seconds, and
    never after half of the models were measured."""
    profiles: dict[str, Profile] = {}
    for b in budgets:
        if b.target not in profiles:
            try:
                profiles[b.target] = load_profile(b.target)
            except UserError as exc:
                raise UserError(f"{b.target_where or b.where}: {exc}") from None
        b.profile = profiles[b.target]
        b.onnx_bytes, b.shape = _read_model(b, allow_external_data)
        if b.min_robust_accuracy is not None:
            b.robust_accuracy = _robust_accuracy(b)


def _sidecar(budget: Budget, name: str, fix: str) -> tuple[bytes, dict]:
    """``name`` beside the model (its prune run's output folder): bytes and parsed JSON."""
    path = budget.path.parent / name
    if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_SIDECAR_BYTES:
        raise UserError(f"{budget.where}: min_robust_accuracy reads {name} beside {budget.path.name}, and there is none{fix}")
    raw = path.read_bytes()
    try:
        return raw, loads(raw)
    except Malformed as exc:
        raise UserError(f"{budget.where}: {path} is {exc}{fix}") from None


def _robust_accuracy(budget: Budget) -> float:
    """The model's robust accuracy as its prune run's report.json gives it, once manifest.json
    (beside both) pins both files by sha256: a report of another model is never read as this one's."""
    import hashlib

    fix = "; gate the model.onnx of a prune run with robustness (--objectives ...,robustness or --adv-finetune) in its own output folder, or drop min_robust_accuracy"
    _, manifest = _sidecar(budget, "manifest.json", fix)
    report_raw, report = _sidecar(budget, "report.json", fix)
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    pinned = {a.get("file"): a.get("sha256") for a in artifacts if isinstance(a, dict)} if isinstance(artifacts, list) else {}
    onnx = report.get("artifacts", {}).get("onnx") if isinstance(report, dict) and isinstance(report.get("artifacts"), dict) else None
    if onnx != budget.path.name:
        # The robust accuracy is the FP32 model's (torch); an INT8 file beside it was never attacked.
        raise UserError(f"{budget.where}: report.json's robust accuracy is that of {str(onnx)[:80]}, not {budget.path.name}{fix}")
    for name, blob in ((budget.path.name, budget.onnx_bytes), ("report.json", report_raw)):
        if pinned.get(name) != hashlib.sha256(blob).hexdigest():
            raise UserError(f"{budget.where}: manifest.json beside the model does not pin this {name} (sha256 differs or is missing){fix}")
    pruned = report.get("pruned")
    value = pruned.get("robust_accuracy") if isinstance(pruned, dict) else None
    if not number_in(value, 0, 1):
        raise UserError(f"{budget.where}: report.json beside the model records no robust accuracy{fix}")
    return float(value)


# --- measuring ---------------------------------------------------------------------------------


def run_gate(
    budgets: list[Budget], cache: str | None = None, no_cache: bool = False, progress: bool = True, allow_external_data: bool = False
) -> list[GateResult]:
    """Measure every model on its target and judge it against its budget."""
    from edgeprune.profiling.profiler import Profiler
    from edgeprune.progress import progress_bar

    prepare(budgets, allow_external_data)
    profilers: dict[str, Profiler] = {}
    results = []
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("latency gate", total=len(budgets), status="")
            for b in budgets:
                bar.update(task, status=b.model)
                if b.target not in profilers:
                    profilers[b.target] = Profiler(b.profile, cache_path=Path(cache) if cache else None, use_cache=not no_cache)
                results.append(_judge(profilers[b.target], b))
                bar.advance(task)
    except ValueError:  # onnxruntime could not run the model; its text may quote the model's data: never shown
        raise UserError(f"{b.where}: {b.path} does not run in onnxruntime; export it again (or load it in onnxruntime yourself to see why)") from None
    finally:
        for profiler in profilers.values():
            profiler.close()
    return results


def _judge(profiler, b: Budget) -> GateResult:
    t0 = time.perf_counter()
    fmt = b.profile.model_format
    key = graph_key(b.onnx_bytes) if fmt == "onnx" else f"{fmt}-{hashlib.sha256(b.onnx_bytes).hexdigest()[:24]}"
    stats, cached = profiler.latency(key, b.shape, lambda: b.onnx_bytes)
    values = [percentile_ms(stats, b.percentile)]
    if abs(values[0] - b.budget_ms) <= b.tolerance * b.budget_ms:
        for _ in range(REMEASURES):
            fresh, _ = profiler.latency(key, b.shape, lambda: b.onnx_bytes, fresh=True)
            values.append(percentile_ms(fresh, b.percentile))
    measured = statistics.median(values)
    return GateResult(
        budget=b,
        measured_ms=measured,
        passed=b.latency_met(measured) and b.robust_met() is not False,
        source="cache" if cached else "measured",
        measurements_ms=values,
        stats=stats.to_dict(),
        fingerprint_hash=profiler.fingerprint_hash,
        seconds=time.perf_counter() - t0,
    )


# --- reporting ---------------------------------------------------------------------------------


def print_table(results: list[GateResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgeprune gate")
    for col in ("model", "target", "pct", "measured ms", "budget ms", "margin", "runs", "source", "verdict"):
        table.add_column(col, justify="left" if col in ("model", "target", "source", "verdict") else "right")
    for r in results:
        b = r.budget
        table.add_row(
            b.model,
            b.profile.name,
            f"p{b.percentile}",
            f"{r.measured_ms:.4f}",
            f"{b.budget_ms:.4f}",
            f"{100 * (r.measured_ms / b.budget_ms - 1):+.1f} %",
            str(len(r.measurements_ms)),
            r.source + (" + re-measured" if len(r.measurements_ms) > 1 else ""),
            "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]",
        )
    console = Console()
    if not console.is_terminal:  # CI logs: do not squeeze the table into 80 columns
        console.width = max(console.width, 140)
    console.print(table)
    over = sum(not r.latency_passed for r in results)
    fragile = sum(r.robust_passed is False for r in results)
    console.print(
        f"{len(results) - over} of {len(results)} within budget" + (f"; {over} over budget" if over else "")
        + (f"; {fragile} below the least robust accuracy" if fragile else "")
    )
    for r in results:
        if r.robust_passed is not None:
            console.print(f"{r.budget.model}: {_robust_text(r).removeprefix('; ')} ({'PASS' if r.robust_passed else 'FAIL'})")


def _robust_text(r: GateResult) -> str:
    b = r.budget
    if b.min_robust_accuracy is None:
        return ""
    return f"; robust accuracy {b.robust_accuracy:.2%} (report.json, PGD on the test split) vs at least {b.min_robust_accuracy:.2%}"


def junit_xml(results: list[GateResult]) -> bytes:
    """One JUnit testcase per model (CI systems show these as test results)."""
    failures = sum(not r.passed for r in results)
    total = f"{sum(r.seconds for r in results):.3f}"
    suites = ET.Element("testsuites", name="edgeprune gate", tests=str(len(results)), failures=str(failures), time=total)
    suite = ET.SubElement(suites, "testsuite", name="edgeprune-gate", tests=str(len(results)), failures=str(failures), errors="0", skipped="0", time=total)
    for r in results:
        b = r.budget
        case = ET.SubElement(suite, "testcase", classname=f"edgeprune.gate.{b.profile.name}", name=b.model, time=f"{r.seconds:.3f}")
        summary = f"p{b.percentile} {r.measured_ms:.4f} ms vs budget {b.budget_ms:.4f} ms on {b.profile.name}" + _robust_text(r)
        if not r.passed:
            what, kind = ("over budget", "LatencyBudgetExceeded") if not r.latency_passed else ("below the least robust accuracy", "RobustAccuracyTooLow")
            failure = ET.SubElement(case, "failure", message=f"{what}: {summary}", type=kind)
            failure.text = json.dumps(r.to_dict(), indent=2)
        ET.SubElement(case, "system-out").text = f"{summary} ({r.source}, measurements {r.measurements_ms})"
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def json_report(results: list[GateResult]) -> bytes:
    payload = {"passed": all(r.passed for r in results), "results": [r.to_dict() for r in results]}
    return (json.dumps(payload, indent=2) + "\n").encode()


def html_page(results: list[GateResult]) -> bytes:
    """The gate's table as one self-contained page (a CI artifact): per model its budget and
    measured value, red or green, and a bar of measured against budget. Model names come from a
    budgets file, which may be someone else's: every string is escaped by the page module."""
    from edgeprune.report.html import page
    from edgeprune.report.charts import esc

    failed = sum(not r.passed for r in results)
    over = sum(not r.latency_passed for r in results)
    fragile = failed - over
    verdict = (f"PASS: all {len(results)} within budget" if not failed else f"FAIL: {over} of {len(results)} over budget"
               + (f", {fragile} below the least robust accuracy" if fragile else ""))
    rows = []
    for r in results:
        b = r.budget
        stats = {k: r.stats.get(k) for k in ("median", "p90", "p99")}
        detail = " · ".join(f"{k} {v:.4f}" for k, v in stats.items() if isinstance(v, (int, float)))
        cells = [
            f'<b class="{"ok" if r.passed else "bad"}">{"PASS" if r.passed else "FAIL"}</b>',
            f"{esc(b.model)}<div class=note>{esc(detail)} ms · device {esc(r.fingerprint_hash or '–')}</div>",
            esc(b.profile.name if b.profile else b.target), esc(f"p{b.percentile}"), esc(f"{r.measured_ms:.4f}"),
            esc(f"{b.budget_ms:.4f}"), esc(f"{100 * (r.measured_ms / b.budget_ms - 1):+.1f} %"), _margin_bar(r),
            esc(f"{len(r.measurements_ms)} ({r.source})"),
        ]
        rows.append(f'<tr class="{"pass" if r.passed else "fail"}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ["verdict", "model", "target", "pct", "measured ms", "budget ms", "margin", "measured / budget", "runs"]
    body = (
        f'<header><h1>edgeprune gate</h1><p class="verdict {"bad" if failed else "ok"}" id="gate-verdict">{esc(verdict)}</p>'
        "<p class=note>Each model timed on its target; a result within the tolerance band around its budget was measured "
        "again and judged on the median of all its measurements. Exit code 0: all within budget, 1: any over (or below its least robust accuracy).</p></header>"
        '<section class=scroll><table class="num gate"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></section>"
    )
    return page(f"edgeprune gate · {verdict}", body).encode("utf-8")


def _margin_bar(r: GateResult) -> str:
    """A 160 px bar of measured / budget (the tick is the budget, at two thirds of the width)."""
    from edgeprune.report.charts import GREEN, RED, svg

    share = r.measured_ms / r.budget.budget_ms
    width = 160 * min(share, 1.5) / 1.5
    colour = GREEN if r.passed else RED
    shapes = [
        '<rect x="0" y="3" width="160" height="10" fill="#f3f4f6"/>',
        f'<rect x="0" y="3" width="{width:.1f}" height="10" fill="{colour}"/>',
        '<line x1="106.7" x2="106.7" y1="0" y2="16" stroke="#111827" stroke-width="1.5"/>',
    ]
    return svg(160, 16, shapes, f"measured {share:.0%} of the budget")
