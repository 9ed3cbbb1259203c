"""The export pipeline shared by ``edgeprune prune`` and ``edgeprune export``.

FP32 ONNX (checked, slimmed) → latency measured on the target → metadata written into the file →
parity with torch and test accuracy in ONNX Runtime → optionally NNCF INT8, measured the same way
and held to an accuracy gate → the ``export`` section that report.json's builder
(``edgeprune.report.builder``) takes, ``MODEL_CARD.md`` and ``manifest.json``. Every number that
ships is measured on the file that ships.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import edgeprune
from edgeprune.errors import UserError
from edgeprune.tasks.data import DataBundle, Split
from edgeprune.files import atomic_write_all
from edgeprune.exporters.int8 import DEFAULT_CALIBRATION_SAMPLES, INT8_FORMATS, INT8_METHODS, QDQ_FORMATS, calibration_items, nncf_available, quantize_int8
from edgeprune.exporters.manifest import MANIFEST, MODEL_CARD, REPORT, build_manifest
from edgeprune.profiling.keys import graph_key
from edgeprune.exporters.model_card import render_model_card
from edgeprune.exporters.runtime_file import RuntimeFile, deliverable_files, runtime_file
from edgeprune.exporters.runtime_score import Scorer, score_runtime_file, split_accuracy, task_scorer
from edgeprune.exporters.onnx import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, OnnxModule, export_onnx, onnx_accuracy, parity, with_metadata
from edgeprune.tasks import outputs
from edgeprune.tasks.task import Task
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.stats import LatencyStats
from edgeprune.progress import console, progress_bar
from edgeprune.profiling.targets import Profile

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ENGINE_FILE = "model.engine"
# Test images compared one by one between torch and ONNX Runtime.
PARITY_SAMPLES = 64


@dataclass
class ExportOptions:
    opset: int
    dynamic_batch: bool = False
    int8: bool = False
    max_int8_drop_pp: float | None = None
    int8_min_speedup: float = 1.0
    # "auto": every format the target can run is made and timed, the fastest that keeps the
    # accuracy gate is shipped; or one of exporters.int8.INT8_FORMATS.
    int8_format: str = "auto"
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    seed: int = 0
    progress: bool = True


@dataclass
class PackageInputs:
    """What the export needs from the task: the input, parity inputs and a score of a file.

    A classification run builds it from its data (:meth:`classification`: ONNX Runtime top-1 on
    the test split, INT8 calibration on train); a user's task from its own calibration batches and
    ``test_score`` run on the file (:meth:`for_task`). INT8 needs the classification data.
    ``score_runtime`` scores the runtime's own deliverable (model.tflite, .pte, .xml) in its runtime.
    """

    input_shape: tuple[int, ...]
    preprocess: dict | None
    class_names: list[str]
    metric: str
    parity_inputs: torch.Tensor
    score_file: Callable[[bytes, str], float]  # (ONNX bytes, label) → the task's score of the file
    data: DataBundle | None = None
    score_runtime: Scorer | None = None  # None: the runtime's file is not scored (reported so)

    @classmethod
    def classification(cls, data: DataBundle, progress: bool = True) -> "PackageInputs":
        test_inputs = torch.cat([x for x, _ in data.test.batches(PARITY_SAMPLES, limit=PARITY_SAMPLES)])
        return cls(
            tuple(data.preprocess.input_shape), data.preprocess.to_dict(), list(data.class_names), "top-1 accuracy",
            test_inputs, lambda blob, label: _accuracy(blob, data.test, label, progress), data,
            lambda native: split_accuracy(native, data.test, progress),
        )

    @classmethod
    def for_task(cls, task, model: nn.Module) -> "PackageInputs":
        """``task`` is a user's task or detection; ``model`` gives the outputs' structure. The file is
        scored by the task's ``score_file(blob, label)`` where it has one, else by its ``test_score``
        of the file behind an :class:`OnnxModule`."""
        with torch.no_grad():
            template = model.eval()(task.example_input())

        def score_file(blob: bytes, label: str) -> float:
            score = task.score_file(blob, label)  # a task that knows how to run the file itself
            if score is not None:
                return score
            console.print(f"{label}: the task's {task.metric} of the file, run by onnxruntime")
            return task.test_score(OnnxModule(blob, template))

        parity_inputs = torch.cat(task.calibration_batches())[:PARITY_SAMPLES]
        own_runner = getattr(type(task), "score_file", Task.score_file) is not Task.score_file
        return cls(tuple(task.input_shape), None, [], task.metric, parity_inputs, score_file, score_runtime=task_scorer(task, template, own_runner))


@dataclass
class Variant:
    """One model file and what was measured on it."""

    precision: str
    file: str | None
    blob: bytes
    latency: LatencyStats
    latency_from_cache: bool
    accuracy: float
    parity: dict

    def summary(self) -> dict:
        return {
            "file": self.file,
            "precision": self.precision,
            "latency_cache_key": graph_key(self.blob),
            "accuracy": {"test": self.accuracy},
            "latency_ms": self.latency.to_dict(),
            "latency_from_cache": self.latency_from_cache,
            "parity_vs_torch": self.parity,
        }


@dataclass
class Package:
    """Everything ``build_package`` produced; nothing is on disk yet."""

    fp32: Variant
    int8: Variant | None
    int8_accepted: bool
    section: dict
    engine: bytes | None = None  # a TensorRT engine built on this host (export --engine)
    native: RuntimeFile | None = None  # the target runtime's own files (model.tflite, model.pte, model.xml + .bin), where it has them

    def files(self) -> dict[str, bytes]:
        files = {FP32_FILE: self.fp32.blob}
        if self.native is not None:
            files.update(self.native.files())
        if self.int8 is not None and self.int8_accepted:
            files[INT8_FILE] = self.int8.blob
        if self.engine is not None:
            files[ENGINE_FILE] = self.engine
        return files

    def artifacts(self) -> dict[str, str | None]:
        """The files :func:`finalize` writes, by their role in report.json's ``artifacts`` (None:
        not written by this export)."""
        files = self.files()
        return {
            "onnx": FP32_FILE,
            "int8": INT8_FILE if INT8_FILE in files else None,
            "engine": ENGINE_FILE if ENGINE_FILE in files else None,
            **dict.fromkeys(deliverable_files()),  # another runtime's file, from an earlier export: not this one's
            **(self.native.artifacts() if self.native is not None else {}),
            "manifest": MANIFEST,
            "model_card": MODEL_CARD,
        }

    def refusal(self) -> str | None:
        """One line saying why the INT8 model was refused, or None."""
        gate = self.section["int8_gate"]
        if gate is None or gate["accepted"]:
            return None
        reasons = []
        if not gate["accuracy_ok"]:
            reasons.append(
                f"test accuracy {gate['int8_accuracy']:.2%} is {gate['drop_pp']:.2f} pp below FP32 "
                f"({gate['fp32_accuracy']:.2%}), more than --max-int8-drop {gate['max_drop_pp']:g} pp"
            )
        if not gate["speed_ok"]:
            reasons.append(
                f"it runs at {gate['int8_latency_ms']:.4f} ms against FP32's {gate['fp32_latency_ms']:.4f} ms "
                f"({gate['speedup']:.2f}x), under --int8-min-speedup {gate['min_speedup']:g}"
            )
        return f"INT8 model REFUSED: {'; and '.join(reasons)}; {INT8_FILE} was not written"


# Fresh sessions a finished file is timed in next to its reference (the median one is reported).
FINAL_SESSIONS = 3


def _measure(profiler: Profiler, blob: bytes, shape: tuple[int, ...], key: str | None = None) -> tuple[LatencyStats, bool]:
    """Latency of a finished file on the profiler's target.

    With a reference set (a prune run: the unpruned model; an export: the FP32 file) the file is
    timed fresh in alternating blocks with it and reported in the reference's units, so FP32 and
    INT8 are compared without the CPU's drift between minutes, in ``FINAL_SESSIONS`` sessions
    (the median one is reported: a single new session can land several percent off). Without
    one, this file becomes the reference: its number is the cached one when this device already
    timed this graph (so the gate, the report and the manifest agree), a fresh measurement
    otherwise.
    """
    key = key or graph_key(blob)
    if profiler.anchor is not None:
        return profiler.latency(key, shape, lambda: blob, fresh=True, sessions=FINAL_SESSIONS)
    hits = profiler.cache_hits
    stats = profiler.set_reference(key, shape, blob, recheck=False)
    return stats, profiler.cache_hits > hits


def _accuracy(blob: bytes, split: Split, label: str, progress: bool) -> float:
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{label} test accuracy (onnxruntime)", total=len(split), status="")
        return onnx_accuracy(blob, split, advance=lambda n: bar.advance(task, n))


def _metadata(common: dict[str, str], precision: str, latency: LatencyStats) -> dict[str, str]:
    stats = latency.to_dict()
    return common | {
        "precision": precision,
        "latency_ms": json.dumps({k: stats[k] for k in ("median", "p90", "p99", "mean", "std", "cv", "n")}),
        "latency_median_ms": f"{latency.median_ms:.6g}",
        "latency_p90_ms": f"{latency.p90_ms:.6g}",
        "latency_p99_ms": f"{latency.p99_ms:.6g}",
    }


def build_package(
    model: nn.Module,
    inputs: PackageInputs,
    profiler: Profiler,
    plan_digest: str,
    opts: ExportOptions,
    torch_accuracy: float,
    reference: str | None = None,
) -> Package:
    """Export ``model`` (a pruned nn.Module) for ``profiler``'s target and measure every file.

    ``reference`` names the model the profiler already times candidates against (a prune run's
    unpruned model); None when it has none, and then the FP32 file becomes the reference.
    """
    if (reference is None) != (profiler.anchor is None):
        raise ValueError("pass reference exactly when the profiler has a reference model set")
    if opts.int8 and inputs.data is None:
        raise ValueError("INT8 export needs the classification data (calibration and the accuracy gate)")
    profile = profiler.profile
    input_shape = inputs.input_shape
    shape = (profile.batch, *input_shape)
    fingerprint = profiler.fingerprint
    pre = inputs.preprocess
    with torch.no_grad():
        names = outputs.names(model.eval()(torch.zeros(1, *input_shape)))
    common = _common_metadata(profile, opts, input_shape, pre, inputs.class_names, plan_digest, fingerprint, names)
    fp32, native = _fp32_variant(model, inputs, profiler, opts, common, shape)
    int8, gate, calibration = None, None, None
    if opts.int8:
        int8, gate, calibration = _int8_variant(model, inputs.data, profiler, opts, common, shape, inputs.parity_inputs, fp32)
    accepted = gate is not None and gate["accepted"]
    section = {
        "target": profile.name,
        "profile": profile.to_dict(),
        "fingerprint": fingerprint,
        "fingerprint_hash": fingerprint_hash(fingerprint),
        "latency_timed_against": reference or FP32_FILE,
        "opset": opts.opset,
        "dynamic_batch": opts.dynamic_batch,
        "plan_sha256_16": plan_digest,
        "input": {
            "name": INPUT_NAME,
            "shape": [None if opts.dynamic_batch else profile.batch, *input_shape],
            "measured_batch": profile.batch,
            "dtype": "float32",
            "layout": "NCHW",
            "preprocess": pre,
        },
        "output": (
            {"name": OUTPUT_NAME, "kind": "logits", "class_names": list(inputs.class_names)}
            if names == [OUTPUT_NAME] else {"names": names, "kind": "task outputs"}
        ),
        "metric": inputs.metric,
        "accuracy_torch_test": torch_accuracy,
        "models": _models_section(fp32, int8, gate, calibration),
        "int8_gate": gate,
        "runtime_file": native.summary() if native is not None else None,
    }
    return Package(fp32=fp32, int8=int8, int8_accepted=accepted, section=section, native=native)


def _common_metadata(
    profile: Profile,
    opts: ExportOptions,
    input_shape: tuple[int, ...],
    pre: dict | None,
    class_names: list[str],
    plan_digest: str,
    fingerprint: dict,
    output_names: list[str],
) -> dict[str, str]:
    """The metadata every exported file carries, whatever its precision (a user task's run has no
    preprocessing of ours to describe: its data is the task's)."""
    shown_batch = BATCH_DIM if opts.dynamic_batch else str(profile.batch)
    described = {
        "mean": json.dumps(pre["mean"]),
        "std": json.dumps(pre["std"]),
        "preprocess": json.dumps(pre, sort_keys=True),
    } if pre is not None else {"preprocess": "the task's own"}
    return {
        "edgeprune_version": edgeprune.__version__,
        "target": profile.name,
        "input_name": INPUT_NAME,
        "output_name": ",".join(output_names),
        "input_shape": "x".join([shown_batch, *map(str, input_shape)]),
        "batch": "dynamic" if opts.dynamic_batch else str(profile.batch),
        "layout": "NCHW",
        **described,
        "class_names": json.dumps(list(class_names)),
        "opset": str(opts.opset),
        "plan_sha256_16": plan_digest,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "fingerprint_sha256_16": fingerprint_hash(fingerprint),
    }


def _fp32_variant(
    model: nn.Module,
    inputs: PackageInputs,
    profiler: Profiler,
    opts: ExportOptions,
    common: dict[str, str],
    shape: tuple[int, ...],
) -> tuple[Variant, RuntimeFile | None]:
    """Export the FP32 ONNX file and the target runtime's own files (``native``, where it has
    them: converted from the model, or from this ONNX file for OpenVINO), time what the target
    runs, write the timing into the ONNX file, then check each file against torch and score it."""
    profile = profiler.profile
    console.print(f"exporting ONNX (opset {opts.opset}, batch {common['batch']}) and timing it on {profile.name}")
    blob = export_onnx(model, shape, opts.opset, dynamic_batch=opts.dynamic_batch)
    native = runtime_file(model, shape, opts.opset, profile.backend, inputs.parity_inputs, blob)
    if native is None or not native.timed:
        latency, cached = _measure(profiler, blob, shape)
    else:  # the target runs its own file: that is what is timed (keyed by the ONNX graph + format)
        latency, cached = _measure(profiler, native.blob, shape, f"{graph_key(blob)}-{native.model_format}")
    blob = with_metadata(blob, _metadata(common, profile.precision, latency))
    fp32 = Variant(
        precision=profile.precision,
        file=FP32_FILE,
        blob=blob,
        latency=latency,
        latency_from_cache=cached,
        accuracy=inputs.score_file(blob, "ONNX FP32"),
        parity=parity(model, blob, inputs.parity_inputs),
    )
    if native is not None:
        native.accuracy = _score_native(native, inputs.score_runtime)
    return fp32, native


def _score_native(native: RuntimeFile, scorer: Scorer | None) -> dict:
    """The runtime file's test score in its runtime (report.json's ``runtime_file.accuracy``)."""
    if scorer is None:
        return {"test": None, "seconds": None, "reason": "the export was given no way to score this file"}
    score = score_runtime_file(native, scorer)
    where = f"{native.deliverable.distribution} {native.runtime_version}"
    console.print(
        f"{native.file} in {where}: test score {score['test']:.2%} ({score['seconds']:.1f} s)" if score["test"] is not None
        else f"{native.file} in {where}: not scored ({score['reason']})"
    )
    return score


def _int8_variant(
    model: nn.Module,
    data: DataBundle,
    profiler: Profiler,
    opts: ExportOptions,
    common: dict[str, str],
    shape: tuple[int, ...],
    test_inputs: torch.Tensor,
    fp32: Variant,
) -> tuple[Variant, dict, dict]:
    """Quantize ``fp32``, measure it like FP32; returns (variant, gate, calibration).

    Which INT8 format is fastest depends on the runtime and the shapes (docs/benchmarks.md: on
    ORT's CPU provider QDQ around depthwise convolutions ran several times slower than FP32 at
    3x32x32), so with ``int8_format="auto"`` every format the target can run is made, timed next
    to the FP32 file and scored, and the fastest one that keeps the accuracy gate is the one
    shipped (the fastest of all when none does). The gate accepts it when its test accuracy drop
    is within ``opts.max_int8_drop_pp`` and it is at least ``opts.int8_min_speedup`` times as
    fast as FP32: an INT8 file slower than FP32 on the target is no deliverable. A refused
    variant keeps its measurements but has no file name; ``gate["tried"]`` lists every format.
    """
    items = calibration_items(data.train, opts.calibration_samples, profiler.profile.batch, seed=opts.seed)
    samples = sum(len(i) for i in items)
    formats = _int8_formats(opts.int8_format, profiler.profile)
    console.print(f"quantizing to INT8 ({', '.join(formats)}) on {samples} train images")
    tried = _quantized(profiler, data, opts, shape, fp32, items, formats)
    within = [t for t in tried if _drop_ok(opts, fp32.accuracy, t[3])]
    fmt, q, q_latency, q_accuracy = min(within or tried, key=lambda t: t[2].median_ms)
    calibration = {"split": "train", "samples": samples, "method": INT8_METHODS[fmt], "format": fmt}
    q = with_metadata(q, _metadata(common, "int8", q_latency) | {"int8_format": fmt})
    drop_pp = 100.0 * (fp32.accuracy - q_accuracy)
    speedup = fp32.latency.median_ms / q_latency.median_ms
    accuracy_ok = _drop_ok(opts, fp32.accuracy, q_accuracy)
    speed_ok = speedup >= opts.int8_min_speedup
    accepted = accuracy_ok and speed_ok
    int8 = Variant("int8", INT8_FILE if accepted else None, q, q_latency, False, q_accuracy, parity(model, q, test_inputs))
    gate = {
        "max_drop_pp": opts.max_int8_drop_pp,
        "fp32_accuracy": fp32.accuracy,
        "int8_accuracy": q_accuracy,
        "drop_pp": drop_pp,
        "accuracy_ok": accuracy_ok,
        "min_speedup": opts.int8_min_speedup,
        "fp32_latency_ms": fp32.latency.median_ms,
        "int8_latency_ms": q_latency.median_ms,
        "speedup": speedup,
        "speed_ok": speed_ok,
        "accepted": accepted,
        "format": fmt,
        "tried": [
            {"format": f, "latency_ms": lat.median_ms, "speedup": fp32.latency.median_ms / lat.median_ms, "accuracy": acc}
            for f, _, lat, acc in tried
        ],
    }
    return int8, gate, calibration


def _quantized(profiler: Profiler, data: DataBundle, opts: ExportOptions, shape, fp32: Variant, items, formats) -> list[tuple]:
    """``(format, blob, latency, test accuracy)`` of each INT8 format in ``formats``."""
    tried = []
    for fmt in formats:
        blob = quantize_int8(fp32.blob, items, INPUT_NAME, progress=opts.progress, fmt=fmt)
        latency, _ = _measure(profiler, blob, shape)
        accuracy = _accuracy(blob, data.test, f"ONNX INT8 ({fmt})", opts.progress)
        tried.append((fmt, blob, latency, accuracy))
        console.print(f"  {fmt}: {latency.median_ms:.4f} ms ({fp32.latency.median_ms / latency.median_ms:.2f}x FP32), test accuracy {accuracy:.2%}")
    return tried


def _drop_ok(opts: ExportOptions, fp32_accuracy: float, accuracy: float) -> bool:
    return opts.max_int8_drop_pp is None or 100.0 * (fp32_accuracy - accuracy) <= opts.max_int8_drop_pp


def _int8_formats(choice: str, profile) -> tuple[str, ...]:
    """The formats to make: the one asked for, or for ``auto`` those the target runs (TensorRT
    imports QDQ only) and whose library is installed (NNCF is an optional extra). INT8 files are
    ONNX: a target that runs its own format (LiteRT, ExecuTorch) cannot time them."""
    if profile.model_format != "onnx":
        raise UserError(f"--int8 makes ONNX INT8 files, which target '{profile.name}' ({profile.backend}) does not run; export without --int8")
    if choice != "auto":
        return (choice,)
    formats = QDQ_FORMATS if profile.backend == "tensorrt" else INT8_FORMATS
    if not nncf_available():
        console.print("NNCF is not installed (`pip install 'edgeprune[int8]'`): its format is not tried")
        formats = tuple(f for f in formats if f != "nncf-qdq")
    return formats


def _models_section(fp32: Variant, int8: Variant | None, gate: dict | None, calibration: dict | None) -> dict:
    """report.json's ``export.models``: one summary per file, INT8 compared with FP32."""
    models = {"fp32": fp32.summary(), "int8": None, "engine": None}
    if int8 is not None:
        models["int8"] = int8.summary() | {
            "accepted": gate["accepted"],
            "calibration": calibration,
            "vs_fp32": {
                "accuracy_drop_pp": gate["drop_pp"],
                "speedup_median": fp32.latency.median_ms / int8.latency.median_ms,
                "speedup_p90": fp32.latency.p90_ms / int8.latency.p90_ms,
            },
        }
    return models


def _json_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def finalize(folder: Path, report: dict, package: Package) -> dict:
    """Write the package's model files, report.json, MODEL_CARD.md and manifest.json into ``folder``.

    ``report`` is the finished report (``edgeprune.report.builder``: it holds this package's
    section and files, and is checked). Returns the manifest. A stale INT8 file or another
    runtime's deliverable from an earlier export is removed: a file the manifest does not vouch for
    must not sit next to those it does.
    """
    pending = dict(package.files())
    pending[REPORT] = _json_bytes(report)
    pending[MODEL_CARD] = render_model_card(report).encode()
    manifest = build_manifest(report, folder, pending)
    pending[MANIFEST] = _json_bytes(manifest)
    atomic_write_all(folder, pending)
    stale = {"int8": INT8_FILE} | deliverable_files()
    for role, name in stale.items():
        if report["artifacts"].get(role) is None:
            (folder / name).unlink(missing_ok=True)
    return manifest
