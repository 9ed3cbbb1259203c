"""Re-export an edgeprune output folder (other opset, dynamic batch, INT8): ``edgeprune export OUT_DIR``.

The folder already holds everything needed and nothing that must be trusted: the model is rebuilt
from ``plan.json`` + ``state_dict.pt`` (no pickles), the data and preprocessing from report.json's
``data``/``preprocess`` (the same seeded splits as the prune run, so calibration stays on TRAIN and
accuracy on TEST), and the target from the profile the run recorded. New files are written next to
the old ones under temporary names and renamed into place only when all of them are complete.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.errors import UserError
from edgeprune.untrusted import read_json
from edgeprune.exporters.int8 import DEFAULT_CALIBRATION_SAMPLES
from edgeprune.progress import console
from edgeprune.profiling.targets import Profile, load_profile, profile_from_untrusted

if TYPE_CHECKING:  # the CLI imports this module to build its parser; torch loads only on use
    from edgeprune.tasks.data import DataBundle

# 13: per-channel QuantizeLinear/DequantizeLinear (INT8 QDQ) and TensorRT's oldest supported opset;
# 20: the newest opset torch's TorchScript exporter writes.
MIN_OPSET, MAX_OPSET = 13, 20


@dataclass
class ExportConfig:
    out_dir: str
    int8: bool = False
    max_int8_drop: float | None = None
    int8_min_speedup: float = 1.0
    int8_format: str = "auto"
    dynamic_batch: bool = False
    opset: int | None = None
    target: str | None = None
    calibration_samples: int | None = None
    engine: bool = False
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True
    trust_model_code: bool = False
    data: str | None = None


def read_report(folder: Path) -> dict:
    """report.json of an edgeprune output folder, with the keys an export needs."""
    if not folder.is_dir():
        raise UserError(f"output folder {folder} not found; pass a folder written by `edgeprune prune`")
    path = folder / "report.json"
    if not path.is_file():
        raise UserError(f"{folder} has no report.json; pass a folder written by `edgeprune prune`")
    report = read_json(path, "run `edgeprune prune` again to rewrite the folder")
    missing = [k for k in ("data", "preprocess", "target", "input_shape", "artifacts", "pruned") if not isinstance(report, dict) or k not in report]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it was not written by this edgeprune, run `edgeprune prune` again")
    _check_artifacts(folder, report["artifacts"], path)
    return report


_ARTIFACT_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def _check_artifacts(folder: Path, artifacts, source: Path) -> None:
    """Every artifact a report names is a file inside its folder: the manifest hashes them and
    export reads them, so ``"plan": "../../elsewhere"`` (or a symlink out) would reach other files."""
    if not isinstance(artifacts, dict):
        raise UserError(f"{source}: 'artifacts' must be an object of role -> file name; run `edgeprune prune` again")
    root = folder.resolve()
    # The two files export reads, under the names it falls back to when the report omits them.
    for role, name in ({"plan": "plan.json", "state_dict": "state_dict.pt"} | artifacts).items():
        if name is None:
            continue
        parts = name.split("/") if isinstance(name, str) else []
        if not parts or not all(_ARTIFACT_PART.match(p) for p in parts) or len(parts) > 4:
            raise UserError(f"{source}: artifact {str(role)[:40]!r} is {str(name)[:80]!r}, not a file name inside the folder; run `edgeprune prune` again")
        if (folder / name).exists() and not (folder / name).resolve().is_relative_to(root):
            raise UserError(f"{source}: artifact {str(role)[:40]!r} ({name}) points outside {folder}; replace the link with the file itself")


_DATASETS = ("fashion-mnist", "digits", "imagefolder")


def _data_problem(data, pre) -> str | None:
    """What is wrong with report.json's data/preprocess sections, or None (typed and bounded)."""
    whole = lambda v, hi: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi  # noqa: E731
    if not isinstance(data, dict) or data.get("name") not in _DATASETS or not whole(data.get("seed"), 1 << 62):
        return f"'data' must name one of {', '.join(_DATASETS)} with an integer seed"
    sizes = data.get("sizes")
    if not isinstance(sizes, dict) or not whole(sizes.get("holdout"), 1 << 31) or sizes["holdout"] < 1:
        return "'data.sizes.holdout' must be a positive integer"
    if data["name"] == "imagefolder" and not isinstance(data.get("source"), str):
        return "'data.source' must be the image folder's path"
    shape = pre.get("input_shape") if isinstance(pre, dict) else None
    if not isinstance(shape, list) or len(shape) != 3 or not all(whole(d, 4096) and d > 0 for d in shape):
        return "'preprocess.input_shape' must be three positive integers"
    for key in ("mean", "std"):
        values = pre.get(key)
        if values is not None and (not isinstance(values, list) or not 1 <= len(values) <= 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )):
            return f"'preprocess.{key}' must be null or 1-3 finite numbers"
    return None


def data_from_report(report: dict, data_spec: str | None = None) -> DataBundle:
    """The prune run's dataset with the same preprocessing and the same seeded splits.

    The split sizes are compared with the report: a changed dataset (an image folder that gained
    files) would silently calibrate or score on different images. An image folder named in a
    report (a file anyone may have written) is read only when the user names it with ``--data``.
    """
    from edgeprune.tasks.data import load_data

    data, pre = report["data"], report["preprocess"]
    problem = _data_problem(data, pre)
    if problem:
        raise UserError(f"report.json: {problem}; run `edgeprune prune` again")
    spec = f"imagefolder:{data['source']}" if data["name"] == "imagefolder" else data["name"]
    if data_spec is not None and data_spec != spec:
        raise UserError(f"--data {data_spec} is not the dataset the model was pruned on ({spec}); pass --data {spec}")
    if data["name"] == "imagefolder" and data_spec is None:
        raise UserError(f"report.json names the image folder {data['source'][:200]}; confirm it with --data {spec[:200]}")
    bundle = load_data(
        spec,
        input_shape=tuple(pre["input_shape"]),
        pad=pre.get("resize") == "pad-centre",
        mean=tuple(pre["mean"]) if pre.get("mean") is not None else None,
        std=tuple(pre["std"]) if pre.get("std") is not None else None,
        holdout=data["sizes"]["holdout"],
        seed=data["seed"],
    )
    if bundle.describe()["sizes"] != data["sizes"]:
        raise UserError(
            f"dataset {spec} now has split sizes {bundle.describe()['sizes']} but the prune run had {data['sizes']}; "
            "restore the data the model was pruned on"
        )
    return bundle


def recorded_profile(report: dict) -> Profile:
    """The exact profile the prune run recorded, else its shipped target by name. report.json may
    come from anyone: the profile is validated like one sent to the agent, and a target that is a
    file path is not read."""
    if isinstance(report.get("profile"), dict):
        return profile_from_untrusted(report["profile"], "report.json's profile")
    target = report["target"]
    if not isinstance(target, str) or target.endswith((".yaml", ".yml")) or "/" in target or "\\" in target:
        raise UserError(f"report.json's 'target' {str(target)[:80]!r} is not a shipped target name; pass --target")
    return load_profile(target)


def check_recorded_agent(profile: Profile, source: str, trusted: bool, fix: str) -> None:
    """The one rule for where a model goes when a file someone else wrote names the target
    (report.json here, for export and ensemble; ``--resume`` applies it to the target and agents a
    checkpoint names, in commands.resume.untrusted_settings): a profile that measures through an agent
    would upload the model to that URL, so it is used only when the user passes
    --trust-model-code; ``fix`` says what else will do (naming the target on the command line)."""
    if profile.agent is not None and not trusted:
        raise UserError(
            f"{source} measures through the agent at {profile.agent[:120]}, which would receive the model: "
            f"{fix}, or pass --trust-model-code if you trust whoever wrote it"
        )


def timing_profile(target: str | None, report: dict, trusted: bool) -> Profile:
    """Where a job on a run's folder (export, ensemble) times its files: ``target`` (the user's
    ``--target``), else the profile the prune run recorded, which may send the model to an agent
    only when ``trusted`` (--trust-model-code, :func:`check_recorded_agent`)."""
    if target:
        return load_profile(target)
    profile = recorded_profile(report)
    check_recorded_agent(profile, "report.json's profile", trusted, "name the target yourself with --target (a shipped name, or your own profile .yaml)")
    return profile


def _validate(cfg: ExportConfig) -> None:
    if cfg.max_int8_drop is not None and not cfg.int8:
        raise UserError("--max-int8-drop only applies with --int8; add --int8 or drop --max-int8-drop")
    if cfg.int8_min_speedup != 1.0 and not cfg.int8:
        raise UserError("--int8-min-speedup only applies with --int8; add --int8 or drop --int8-min-speedup")
    if cfg.int8_format != "auto" and not cfg.int8:
        raise UserError("--int8-format only applies with --int8; add --int8 or drop --int8-format")
    if not (math.isfinite(cfg.int8_min_speedup) and cfg.int8_min_speedup >= 0):
        raise UserError(f"--int8-min-speedup is a ratio FP32 time / INT8 time (0 accepts any), got {cfg.int8_min_speedup}")
    if cfg.max_int8_drop is not None and cfg.max_int8_drop < 0:
        raise UserError(f"--max-int8-drop is a loss in percentage points and cannot be negative, got {cfg.max_int8_drop}")
    if cfg.opset is not None and not MIN_OPSET <= cfg.opset <= MAX_OPSET:
        raise UserError(f"--opset {cfg.opset} is outside what edgeprune exports ({MIN_OPSET} to {MAX_OPSET}); pass e.g. --opset 17")
    if cfg.calibration_samples is not None and cfg.calibration_samples < 1:
        raise UserError(f"--calibration-samples must be at least 1, got {cfg.calibration_samples}")


def run_export(cfg: ExportConfig) -> dict:
    """Rebuild, export and measure; returns ``{"report", "manifest", "int8_refused"}``."""
    from edgeprune.exporters.int8 import require_nncf
    from edgeprune.exporters.package import ExportOptions, PackageInputs, build_package, finalize
    from edgeprune.profiling.profiler import Profiler
    from edgeprune.report.builder import ExportRecord, exported
    from edgeprune.space.pruned import load_pruned
    from edgeprune.tasks.training import evaluate

    _validate(cfg)
    folder = Path(cfg.out_dir)
    report = read_report(folder)
    task = report.get("task") or {}
    if task.get("kind", "classification") != "classification":
        raise UserError(
            f"{folder} was pruned for task {str(task.get('spec'))[:120]}: `edgeprune export` re-scores with the "
            "classification data only; use the model.onnx the prune run wrote (scored by your task), or prune again with other --target"
        )
    profile = timing_profile(cfg.target, report, cfg.trust_model_code)
    artifacts = report["artifacts"]
    model = load_pruned(
        folder / (artifacts.get("plan") or "plan.json"), folder / (artifacts.get("state_dict") or "state_dict.pt"), trust_code=cfg.trust_model_code
    )
    data = data_from_report(report, cfg.data)
    if tuple(data.preprocess.input_shape) != tuple(report["input_shape"]):
        raise UserError(f"report.json's input_shape {report['input_shape']} differs from its preprocess; run `edgeprune prune` again")
    if cfg.int8 and cfg.int8_format == "nncf-qdq":
        require_nncf()  # fail before the export work when NNCF is missing
    profiler = Profiler(profile, cache_path=Path(cfg.cache) if cfg.cache else None, use_cache=not cfg.no_cache)
    try:
        opts = ExportOptions(
            opset=cfg.opset or profile.opset,
            dynamic_batch=cfg.dynamic_batch,
            int8=cfg.int8,
            max_int8_drop_pp=cfg.max_int8_drop,
            int8_min_speedup=cfg.int8_min_speedup,
            int8_format=cfg.int8_format,
            calibration_samples=cfg.calibration_samples or DEFAULT_CALIBRATION_SAMPLES,
            seed=int(report["data"].get("seed", 0)),
            progress=cfg.progress,
        )
        package = build_package(
            model, PackageInputs.classification(data, cfg.progress), profiler, _plan_digest(folder, artifacts), opts, evaluate(model, data.test)
        )
    finally:
        profiler.close()
    if cfg.engine:
        package.engine, package.section["models"]["engine"] = _build_engine(profile, package.fp32.blob)
    report = exported(report, ExportRecord.of(package))
    manifest = finalize(folder, report, package)
    from edgeprune.report.html import write_report_html

    write_report_html(folder)  # the page shows what the new report.json and manifest.json say
    _print_summary(folder, package)
    refusal = package.refusal()
    if refusal:
        console.print(f"[red]{refusal}[/red]")
    return {"report": report, "manifest": manifest, "int8_refused": refusal is not None}


def _build_engine(profile: Profile, onnx_bytes: bytes) -> tuple[bytes, dict]:
    """A TensorRT engine of the FP32 ONNX, built with this host's trtexec (run export on the
    device: an engine is tied to its GPU model and TensorRT version and is never portable)."""
    import tempfile

    from edgeprune.profiling.tensorrt import build_engine

    if profile.backend != "tensorrt":
        raise UserError(f"--engine needs a TensorRT target; '{profile.name}' uses {profile.backend} (pass e.g. --target jetson-orin)")
    if profile.agent:
        console.print(
            f"note: {profile.name} measures through the agent at {profile.agent}, but engines are built locally: "
            "run `edgeprune export --engine` on the device itself"
        )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(onnx_bytes)
        info = build_engine(onnx_path, Path(tmp) / "model.engine", profile)
        blob = (Path(tmp) / "model.engine").read_bytes()
    info = {k: v for k, v in info.items() if k != "engine"}
    return blob, info | {"file": "model.engine", "portable": False, "note": "runs only on this GPU model with this TensorRT version"}


def _plan_digest(folder: Path, artifacts: dict) -> str:
    from edgeprune.space.pruned import read_plan

    return read_plan(folder / (artifacts.get("plan") or "plan.json")).digest()


def _print_summary(folder: Path, package) -> None:
    from rich.table import Table

    table = Table(title=f"edgeprune export · {package.section['target']} · latency in ms")
    for col in ("file", "precision", "test acc", "median", "p90", "p99", "max |Δ| vs torch"):
        table.add_column(col, justify="left" if col in ("file", "precision") else "right", no_wrap=col == "file")
    for v in (package.fp32, package.int8):
        if v is None:
            continue
        table.add_row(
            v.file or "(refused)",
            v.precision,
            f"{v.accuracy:.2%}",
            f"{v.latency.median_ms:.4f}",
            f"{v.latency.p90_ms:.4f}",
            f"{v.latency.p99_ms:.4f}",
            f"{v.parity['max_abs_error']:.3g}",
        )
    console.print(table)
    console.print(f"files in {folder}/: " + ", ".join(sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))))
