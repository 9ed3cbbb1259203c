"""``edgeprune export OUT_DIR``: re-export an edgeprune output folder (other opset, dynamic batch, INT8).

The work is :func:`edgeprune.jobs.export.run_export`; torch loads only when it runs.
"""

from __future__ import annotations

import argparse

from edgeprune.commands.args import add_cache_args, add_progress_args, from_args
from edgeprune.jobs.export import MAX_OPSET, MIN_OPSET, ExportConfig, run_export
from edgeprune.exporters.int8 import DEFAULT_CALIBRATION_SAMPLES, INT8_FORMATS


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="re-export an edgeprune output folder: ONNX (opset, dynamic batch), INT8, manifest, model card")
    e.add_argument("out_dir", metavar="OUT_DIR", help="folder written by `edgeprune prune` (plan.json, state_dict.pt, report.json)")
    e.add_argument("--int8", action="store_true", help="also write model.int8.onnx: post-training quantization calibrated on the train split, in the format that runs fastest on the target")
    e.add_argument(
        "--int8-format", choices=("auto", *INT8_FORMATS), default="auto",
        help="auto (default): make every format the target runs (NNCF QDQ when installed, ONNX Runtime QDQ and QOperator; QDQ only for TensorRT), time each, ship the fastest that keeps --max-int8-drop; or just one",
    )
    e.add_argument("--max-int8-drop", type=float, metavar="PP", help="refuse the INT8 model (exit 1) when its test accuracy is more than PP percentage points below FP32")
    e.add_argument("--int8-min-speedup", type=float, default=1.0, metavar="X", help="refuse the INT8 model (exit 1) unless it runs at least X times as fast as FP32 on the target (default 1: never slower; 0 accepts any)")
    e.add_argument("--calibration-samples", type=int, help=f"train images used to calibrate INT8 (default {DEFAULT_CALIBRATION_SAMPLES})")
    e.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension instead of the target's fixed batch")
    e.add_argument("--engine", action="store_true", help="also build model.engine with this host's TensorRT (trtexec) for a TensorRT --target; run it on the device, engines are not portable")
    e.add_argument("--opset", type=int, help=f"ONNX opset ({MIN_OPSET} to {MAX_OPSET}; default the target profile's)")
    e.add_argument("--target", help="target profile name or YAML path to measure on (default: the prune run's recorded profile; one that measures through an agent needs --trust-model-code)")
    e.add_argument(
        "--trust-model-code", action="store_true",
        help="allow a plan whose original model is a package.module:factory (imported and run) or a torch.save()d file (unpickled), and a recorded profile that measures through an agent (the model is uploaded there; or pass --target); torchvision: plans never need it",
    )
    e.add_argument("--data", metavar="SPEC", help="the dataset the model was pruned on (default: the one report.json names); needed to confirm an imagefolder:PATH a report names")
    add_cache_args(e)
    add_progress_args(e)


def config(args: argparse.Namespace) -> ExportConfig:
    return from_args(ExportConfig, args, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """0 exported, 1 the INT8 model was refused by --max-int8-drop or --int8-min-speedup (the FP32 files are written)."""
    return 1 if run_export(config(args))["int8_refused"] else 0
