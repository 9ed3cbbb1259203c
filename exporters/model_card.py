"""``MODEL_CARD.md``: the human-readable side of the manifest, rendered from report.json.

Someone deciding whether to ship the model reads this, not JSON: what it is for, what data it
saw, how accurate it is where (test split, per precision), how fast it is on which device, and
what the numbers do not say. Everything here is a number measured by the run; nothing is typed in.
"""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _latency_row(target: str, label: str, file: str, precision: str, lat: dict) -> str:
    return (
        f"| {target} | {label} | {file} | {precision} | {_ms(lat['median'])} | "
        f"{_ms(lat['p90'])} | {_ms(lat['p99'])} | {lat['n']} | {lat['cv']:.3f} |"
    )


def render_model_card(report: dict) -> str:
    export = report["export"]
    models = export["models"]
    fp32, int8 = models["fp32"], models["int8"]
    data = report.get("data", {})
    pre = export["input"]["preprocess"]
    task = report.get("task") or {"kind": "classification"}
    classes = export["output"].get("class_names", [])
    spec = (report.get("model") or {}).get("spec", "the original model")
    shape = export["input"]["shape"]
    shown_shape = "×".join("N" if d is None else str(d) for d in shape)
    baseline, pruned = report.get("baseline", {}), report.get("pruned", {})

    lines = [
        *(_intro_lines(report, export, spec, classes, shown_shape) if task["kind"] == "classification"
          else _task_intro_lines(report, export, spec, task, shown_shape)),
        *(_data_lines(data, pre, int8) if pre is not None else _task_data_lines(task)),
        *_checkpoint_lines(task.get("checkpoint")),
        *_metrics_lines(export, baseline, fp32, int8, task),
        *_runtime_file_lines(export.get("runtime_file")),
        *_robustness_lines(report.get("robustness"), baseline, pruned),
        *_latency_lines(report, export, baseline, pruned, fp32, int8),
        *_per_layer_lines(report.get("per_layer")),
        *_caveat_lines(export),
    ]
    return "\n".join(lines) + "\n"


def _title_lines(report: dict, export: dict, spec: str) -> list[str]:
    return [
        f"# Model card: {spec}, pruned for {report.get('target', export['target'])}",
        "",
        f"Produced by edgeprune {report.get('edgeprune_version', '')} · plan `{export['plan_sha256_16']}` · "
        f"files pinned by sha256 in `manifest.json`.",
        "",
        "## Intended use",
        "",
    ]


def _intro_lines(report: dict, export: dict, spec: str, classes: list[str], shown_shape: str) -> list[str]:
    return [
        *_title_lines(report, export, spec),
        f"Image classification into {len(classes)} classes ({', '.join(classes)}) on the edge target "
        f"`{export['target']}`, from a single {shown_shape} float32 NCHW tensor named `{export['input']['name']}`; "
        f"the output `{export['output']['name']}` holds one logit per class (argmax = prediction). "
        "Inputs must be preprocessed exactly as described under Data. Not validated for images unlike "
        "the training data, or for decisions where an error harms someone without further validation.",
        "",
    ]


def _task_intro_lines(report: dict, export: dict, spec: str, task: dict, shown_shape: str) -> list[str]:
    names = export["output"].get("names", [export["output"].get("name", "?")])
    return [
        *_title_lines(report, export, spec),
        f"The user's task `{task.get('spec', '?')}` ({task.get('name', '')}), scored by its {task.get('metric', 'score')}, "
        f"on the edge target `{export['target']}`, from a single {shown_shape} float32 tensor named "
        f"`{export['input']['name']}`; outputs {', '.join(f'`{n}`' for n in names)}, as the original model returns them. "
        "Inputs must be prepared exactly as the task prepares them. Not validated beyond the task's own data.",
        "",
    ]


def _task_data_lines(task: dict) -> list[str]:
    where = "its test split (`test_score`)" if task.get("test_split") else "the data its `score` uses (the task has no test_score: the search saw the same data)"
    return [
        "## Data",
        "",
        f"- the task's own: calibration batches for BatchNorm re-estimation and parity, scored on {where}",
        f"- fine-tuning: {'the task' + chr(39) + 's fine_tune' if task.get('fine_tune') else 'none (the task has no fine_tune)'}",
        "",
    ]


def _checkpoint_lines(checkpoint: dict | None) -> list[str]:
    """What loading the task's own checkpoint (detection's ``model.pt``) needs, said plainly."""
    if not checkpoint:
        return []
    file, blocks = checkpoint["file"], checkpoint.get("edgeprune_blocks") or []
    if not blocks:
        return [f"`{file}` loads with {' and '.join(checkpoint['loads_with'])} alone (every pruned module is one of its own classes).", ""]
    return [
        f"`{file}` needs edgeprune importable to load (besides {checkpoint['loads_with'][0]}): "
        f"{len(blocks)} block(s) ({', '.join(f'`{b}`' for b in blocks)}) kept their two halves at different widths, "
        "which only edgeprune's split-free C2f class computes. `model.onnx` needs neither.",
        "",
    ]


def _data_lines(data: dict, pre: dict, int8: dict | None) -> list[str]:
    return [
        "## Data",
        "",
        f"- dataset: `{data.get('name', '?')}` from `{data.get('source', '?')}`; sizes {data.get('sizes', {})} "
        f"(holdout carved from train, seed {data.get('seed', '?')})",
        f"- preprocessing (firmware must repeat it): uint8 pixels × {pre['scale']}, resize `{pre['resize']}` "
        f"to {pre['input_shape']}, grey→RGB {pre['grey_to_rgb']}, mean {pre['mean']}, std {pre['std']}, layout {pre['layout']}",
        "- INT8 calibration: "
        + (f"{int8['calibration']['samples']} images of the TRAIN split" if int8 else "not quantized"),
        "",
    ]


def _metrics_lines(export: dict, baseline: dict, fp32: dict, int8: dict | None, task: dict) -> list[str]:
    """The test-score table and the torch ↔ ONNX Runtime parity under it."""
    where = "test split" if task.get("test_split", True) else "the task's score data"
    lines = [
        f"## Metrics ({where})",
        "",
        f"| model | runtime | {export.get('metric', 'top-1 accuracy')} |",
        "|---|---|---|",
    ]
    if "accuracy" in baseline:
        lines.append(f"| unpruned original | torch | {_pct(baseline['accuracy'])} |")
    lines.append(f"| pruned | torch | {_pct(export['accuracy_torch_test'])} |")
    lines.append(f"| `{fp32['file']}` ({fp32['precision']}) | onnxruntime | {_pct(fp32['accuracy']['test'])} |")
    if int8:
        lines.append(f"| INT8 ({'accepted' if int8['accepted'] else 'REFUSED'}) | onnxruntime | {_pct(int8['accuracy']['test'])} |")
    native = export.get("runtime_file")
    if native:
        score = (native.get("accuracy") or {}).get("test")
        shown = _pct(score) if score is not None else f"not scored: {(native.get('accuracy') or {}).get('reason') or 'no score'}"
        lines.append(f"| `{native['file']}` ({native['format']}) | {native['runtime']} {native['runtime_version'] or ''} | {shown} |")
    lines += ["", f"Parity torch ↔ ONNX Runtime on {fp32['parity_vs_torch']['samples']} inputs: {_parity(fp32)}"
              + (f"; INT8: {_parity(int8)}." if int8 else "."), ""]
    return lines


def _runtime_file_lines(native: dict | None) -> list[str]:
    """The target runtime's own files: which one was timed, each file's sha256, parity with torch."""
    if not native:
        return []
    files = native.get("files") or {native["file"]: {"sha256": native["sha256"], "bytes": native["bytes"]}}
    timed = "it is the file that was timed" if native.get("timed", True) else "converted from `model.onnx`, the file that was timed"
    lines = [
        "## The target runtime's file",
        "",
        f"The target runs {' + '.join(f'`{n}`' for n in files)} ({native['format']}, {native['runtime']} "
        f"{native['runtime_version'] or '(version unknown)'}); {timed}. Parity torch ↔ {native['runtime']} on "
        f"{native['parity_vs_torch']['samples']} inputs: {_parity(native)}.",
        "",
    ]
    lines += [f"- `{name}`: sha256 `{entry['sha256']}`, {entry['bytes']} bytes" for name, entry in files.items()]
    return [*lines, ""]


def _robustness_lines(robustness: dict | None, baseline: dict, pruned: dict) -> list[str]:
    """Clean and robust test accuracy side by side, and how robustness was measured and used."""
    if not robustness or "robust_accuracy" not in pruned:
        return []
    attack = robustness["attack"]
    how = [
        "objective of the search (accuracy on a shared adversarial set per round)" if robustness.get("objective") else None,
        f"adversarial fine-tune ({robustness.get('adv_ratio', 0):.0%} of every batch attacked)" if robustness.get("adv_finetune") else None,
    ]
    return [
        "## Robustness (test split, torch)",
        "",
        f"L∞ PGD, eps {attack['eps']:.4g}, {attack['steps']} steps of {attack['alpha']:.4g}, random start, on the model itself "
        f"({attack.get('library', '')}), over {robustness['test_samples']} test images in pixel scale [0, 1].",
        "",
        "| model | clean accuracy | robust accuracy |",
        "|---|---|---|",
        f"| unpruned original | {_pct(baseline.get('accuracy', 0))} | {_pct(baseline['robust_accuracy'])} |",
        f"| pruned | {_pct(pruned['accuracy'])} | {_pct(pruned['robust_accuracy'])} |",
        "",
        f"Robustness in this run: {'; '.join(h for h in how if h) or 'measured only'}. Robust accuracy holds for this attack "
        "and radius only; it is not a certificate.",
        "",
    ]


def _parity(variant: dict) -> str:
    p = variant["parity_vs_torch"]
    top1 = p.get("top1_agreement")
    return f"max abs error {p['max_abs_error']:.3g}" + ("" if top1 is None else f", top-1 agreement {top1:.2%}")


def _latency_lines(report: dict, export: dict, baseline: dict, pruned: dict, fp32: dict, int8: dict | None) -> list[str]:
    """The latency table, and whether the prune run's budget was met."""
    lines = [
        "## Latency per target (ms, measured)",
        "",
        "| target | model | file | precision | median | p90 | p99 | runs | CV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if "latency_ms" in baseline:
        lines.append(_latency_row(report["target"], "unpruned original", "–", report.get("fingerprint", {}).get("precision", "–"), baseline["latency_ms"]))
    lines.append(_latency_row(export["target"], "pruned", fp32["file"], fp32["precision"], fp32["latency_ms"]))
    if int8:
        lines.append(_latency_row(export["target"], "pruned, INT8", int8["file"] or "(refused, not written)", "int8", int8["latency_ms"]))
    if "budget_ms" in report:
        lines += ["", f"Budget of the prune run: {report['budget_ms']:.4g} ms median on {report['target']} "
                      f"({'met' if (report.get('memory') or {}).get('latency_met', report.get('budget_met')) else 'NOT met'}; pruned {_ms(pruned.get('latency_ms', {}).get('median'))} ms)."]
        memory = report.get("memory")
        if memory and memory.get("limit_mb") is not None:
            lines.append(f"Memory limit: {memory['limit_mb']:g} MiB peak for one inference ({'met' if memory.get('met') else 'NOT met'}; "
                         f"{memory['file']} peaks at {memory['pruned']['peak_mb']:.1f} MiB, the unpruned model at {memory['baseline']['peak_mb']:.1f} MiB).")
    return lines


# Layers the card lists (the slowest of the unpruned model); report.json's per_layer has all.
CARD_LAYERS = 12


def _per_layer_lines(rows: list[dict] | None) -> list[str]:
    """The slowest layers of the unpruned model, before and after, from report.json's per_layer."""
    if not rows:
        return []
    slowest = sorted(rows, key=lambda r: -r["ms_before"])[:CARD_LAYERS]
    lines = [
        "",
        "## Where the time goes (per layer)",
        "",
        f"The {len(slowest)} slowest layers of the unpruned model, from ONNX Runtime's per-node profile (each layer's share "
        "of the profiled run times the measured median; pools and reorders count to the layer before them):",
        "",
        "| layer | kind | channels out before → after | ms before | ms after |",
        "|---|---|---|---|---|",
    ]
    for r in slowest:
        after = "–" if r["out_after"] is None else str(r["out_after"])
        lines.append(f"| `{r['layer']}` | {r['kind']} | {r['out_before']} → {after} | {_ms(r['ms_before'])} | {_ms(r['ms_after'])} |")
    return lines


def _caveat_lines(export: dict) -> list[str]:
    gate = export["int8_gate"]
    lines = [
        "",
        "## Caveats",
        "",
        f"- Latencies hold for the device fingerprint `{export['fingerprint_hash']}` only (CPU, runtime and version, "
        "threads, provider, precision, opset; in `manifest.json`); another device, runtime version or thread count "
        "gives other numbers. Measure on the real target before relying on them.",
        f"- Timing: ONNX Runtime in a separate process without torch, timed in alternating blocks with "
        f"{export['latency_timed_against']} and reported in its units, because a shared CPU drifts between minutes; "
        "compare files with ratios rather than absolute numbers taken at different times.",
        "- Accuracy is top-1 on the test split only; the held-out numbers the search used are proxies and not reported here.",
    ]
    if gate is not None:
        limit = "no limit set" if gate["max_drop_pp"] is None else f"limit {gate['max_drop_pp']:g} pp"
        lines.append(
            f"- INT8 (NNCF post-training quantization, QDQ) lost {gate['drop_pp']:.2f} pp of test accuracy ({limit}) "
            f"and ran {gate['speedup']:.2f}x as fast as FP32 (at least {gate['min_speedup']:g}x required); "
            + ("accepted." if gate["accepted"] else "REFUSED, so no INT8 file is shipped.")
            + " INT8 speed in ONNX Runtime on a CPU says little about INT8 speed in TensorRT."
        )
    lines.append("- No TensorRT engine is part of this export (`engine: null`).")
    return lines
