"""Shrink every torchvision classification model at its native input size and check the result.

For each model: build it (random weights), make its ChannelSpace, draw a random genome at about
half width, shrink, run a real Fashion-MNIST batch (resized, ImageNet-normalised), export to ONNX,
run it in onnxruntime and compare with torch (relative error and top-1), and count MACs before and
after. One line per model, then ``N passed, M failed`` and the wall time.

    python tools/zoo_sweep.py                       # all 80 models
    python tools/zoo_sweep.py resnet18 vit_b_16     # a subset
    python tools/zoo_sweep.py --json sweep.json     # also write the rows as JSON
    python tools/zoo_sweep.py --timm                # timm's edge families instead (TIMM_EDGE)
    python tools/zoo_sweep.py --timm --size 128     # ... at 128x128 instead of each one's native size
    python tools/zoo_sweep.py --smoke               # resnet18 at 32x32 only (seconds; the test suite runs it)

timm models are built as ``edgeprune prune timm:NAME`` builds them: random weights, in their
re-parameterised deploy form where they have one (RepVGG, MobileOne, FastViT).

Random-weight networks have nearly tied logits, so "identical top-1" is only checked on samples
whose top-2 gap is clearly above the numeric error (``TIE_FACTOR`` times the largest absolute
difference seen, and at least 1e-6 of the logit scale); the table says how many samples counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from edgeprune.tasks.data import load_data
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import deploy_form, timm_model as timm_model_of
from edgeprune.space.channels import ChannelSpace, macs_and_params

STEP = 8  # round_to=8, the TensorRT FP16 grid: the setting of the failing check
BATCH = 4
REL_TOL = 1e-4
TIE_FACTOR = 10.0
OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's common edge families: MobileNet v2/v3/v4, EfficientNet(-Lite), GhostNet, RepVGG, MobileOne,
# FBNet, MnasNet, LCNet, HardCoReNAS, TinyNet, ResNet, RegNet, ConvNeXt, LeViT, EfficientViT,
# MobileViT, FastViT, ReXNet, MixNet.
TIMM_EDGE = (
    "mobilenetv3_small_100 mobilenetv3_large_100 mobilenetv2_100 tf_mobilenetv3_small_100 mobilenetv4_conv_small "
    "efficientnet_b0 efficientnet_lite0 tf_efficientnet_lite0 ghostnet_100 ghostnetv2_100 repvgg_a0 mobileone_s0 "
    "mobileone_s1 fbnetc_100 mnasnet_100 semnasnet_100 lcnet_050 lcnet_100 hardcorenas_a tinynet_a resnet18 resnet18d "
    "regnetx_002 regnety_002 convnext_atto levit_128s efficientvit_m0 mobilevit_xxs fastvit_t8 rexnet_100 mixnet_s"
).split()


def native_size(name: str, model: torch.nn.Module) -> int:
    """The input size the model is built for: its fixed ``image_size`` or its weights' crop size."""
    fixed = getattr(model, "image_size", None)
    if isinstance(fixed, int):
        return fixed
    weights = torchvision.models.get_model_weights(name).DEFAULT
    crop = weights.transforms().crop_size
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def random_widths(space: ChannelSpace, rng: np.random.Generator) -> list[int]:
    """A random genome around half width: each group's ratio drawn from [0.35, 0.65]."""
    return [g.options[g.nearest_option(rng.uniform(0.35, 0.65) * g.full)] for g in space.groups]


def top1_check(torch_out: np.ndarray, ort_out: np.ndarray) -> tuple[bool, int]:
    """(top-1 identical on every sample with a clear winner, how many samples had one)."""
    scale = float(np.abs(torch_out).max()) or 1.0
    margin = max(TIE_FACTOR * float(np.abs(torch_out - ort_out).max()), 1e-6 * scale)
    top2 = np.sort(torch_out, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > margin
    same = torch_out.argmax(1) == ort_out.argmax(1)
    return bool(same[clear].all()), int(clear.sum())


def check_model(name: str, images_for, seed: int = 0, model: torch.nn.Module | None = None, size: int | None = None) -> dict:
    """Shrink ``name`` at about half width and check forward, ONNX parity and top-1.

    ``model`` and ``size`` replace the torchvision model at its native size (tests use small ones).
    """
    row: dict = {"model": name}
    start = time.perf_counter()
    torch.manual_seed(seed)
    if model is None:
        model = torchvision.models.get_model(name, weights=None)
    model = model.eval()
    size = size or native_size(name, model)
    shape = (3, size, size)
    row["input"] = f"{size}x{size}"
    space = ChannelSpace(model, shape, STEP, model_spec={"kind": "torchvision", "spec": f"torchvision:{name}"})
    head = space.output_layers[-1]
    if not head.weight.detach().any():
        # torchvision zero-initialises ViT's head: all logits would be 0 and parity vacuous.
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    row["groups"] = len(space.groups)
    row["skipped"] = space.skipped
    if not space.groups:
        raise RuntimeError("no prunable group")
    widths = random_widths(space, np.random.default_rng(seed))
    row["width_ratio"] = round(sum(widths) / sum(g.full for g in space.groups), 3)
    pruned = space.shrink(space.plan(widths))
    x = images_for(size)
    with torch.no_grad():
        expected = pruned(x).numpy()
    classes = head.out_features if isinstance(head, torch.nn.Linear) else head.out_channels
    if expected.shape != (len(x), classes):
        raise RuntimeError(f"pruned output shape {expected.shape}, expected {(len(x), classes)}")
    onnx = export_onnx_bytes(pruned, tuple(x.shape), OPSET)  # handles nn.MultiheadAttention's fast path
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    row["rel_err"] = float(np.abs(got - expected).max() / (np.abs(expected).max() or 1.0))
    row["top1_same"], row["top1_counted"] = top1_check(expected, got)
    row["macs_before"], _ = macs_and_params(model, shape)
    row["macs_after"], _ = macs_and_params(pruned, shape)
    row["ok"] = row["rel_err"] <= REL_TOL and row["top1_same"]
    if not row["ok"]:
        row["error"] = f"ONNX parity: rel err {row['rel_err']:.2e}, top-1 same {row['top1_same']}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _out_of_time(_signum, _frame):
    raise TimeoutError("took longer than --timeout (Torch-Pruning's dependency tracing did not finish)")


def timm_model(name: str) -> torch.nn.Module:
    """timm's ``name`` as ``edgeprune prune timm:NAME`` builds it (deploy form, random weights)."""
    return deploy_form(timm_model_of(name, None))


def timm_size(name: str) -> int:
    import timm

    return int(timm.get_pretrained_cfg(name).input_size[-1]) if timm.get_pretrained_cfg(name) else 224


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: every torchvision classification model)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=2, help="torch/onnxruntime threads (default 2)")
    parser.add_argument("--timm", action="store_true", help="sweep timm models (default: TIMM_EDGE) instead of torchvision's")
    parser.add_argument("--size", type=int, help="input size for every model (default: each model's native size)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one model may take before it counts as failed (default 300)")
    parser.add_argument("--smoke", action="store_true", help="the sweep's code path on resnet18 at 32x32 only (the test suite's run)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.size = args.models or ["resnet18"], args.size or 32
    torch.set_num_threads(args.threads)
    if args.timm:
        import timm

        everything = timm.list_models()
        names = args.models or TIMM_EDGE
    else:
        everything = torchvision.models.list_models(module=torchvision.models)
        names = args.models or everything
    unknown = [n for n in names if n not in everything]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; pick from {'timm' if args.timm else 'torchvision.models'}.list_models()", file=sys.stderr)
        return 2
    data = load_data("fashion-mnist", holdout=1)
    raw = data.test.images[:BATCH]

    def images_for(size: int) -> torch.Tensor:
        """The same real images at ``size``, preprocessed as an ImageNet model expects."""
        x = torch.nn.functional.interpolate(raw.float() / 255.0, size=(size, size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    rows = []
    sweep_start = time.perf_counter()
    header = f"{'model':24} {'input':>7} {'groups':>6} {'skip':>4} {'width':>5} {'rel err':>9} {'top1 (n)':>9} {'GMACs before':>12} {'after':>8} {'s':>6}  result"
    print(header)
    print("-" * len(header))
    for name in names:
        start = time.perf_counter()
        # Torch-Pruning can loop for ever on some graphs (index mappings that grow); the alarm turns
        # that into a failed row instead of a hung sweep.
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.alarm(args.timeout)
        try:
            row = check_model(name, images_for, model=timm_model(name) if args.timm else None, size=args.size or (timm_size(name) if args.timm else None))
        except Exception as exc:  # a failing model is a row in the table, not the end of the sweep
            row = {"model": name, "ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"}
            row["seconds"] = round(time.perf_counter() - start, 1)
            if os.environ.get("ZOO_SWEEP_TRACEBACK"):
                traceback.print_exc()
        finally:
            signal.alarm(0)
        rows.append(row)
        gc.collect()
        if "rel_err" in row:
            print(
                f"{name:24} {row['input']:>7} {row['groups']:>6} {len(row['skipped']):>4} {row['width_ratio']:>5.2f} "
                f"{row['rel_err']:>9.1e} {('same' if row['top1_same'] else 'DIFF') + ' (' + str(row['top1_counted']) + ')':>9} "
                f"{row['macs_before'] / 1e9:>12.2f} {row['macs_after'] / 1e9:>8.2f} {row['seconds']:>6.1f}  "
                f"{'ok' if row['ok'] else 'FAIL ' + row['error']}",
                flush=True,
            )
        else:
            print(f"{name:24} {'':>7} {'':>6} {'':>4} {'':>5} {'':>9} {'':>9} {'':>12} {'':>8} {row['seconds']:>6.1f}  FAIL {row['error']}", flush=True)
    wall = time.perf_counter() - sweep_start
    passed = sum(1 for r in rows if r["ok"])
    failed = [r for r in rows if not r["ok"]]
    skipped = {}
    for r in rows:
        for s in r.get("skipped", []):
            skipped.setdefault(s["reason"].split(":")[0], []).append(r["model"])
    if skipped:
        print("\ngroups left out of the space (reason: models):")
        for reason, models in skipped.items():
            print(f"  {reason}: {', '.join(sorted(set(models)))}")
    for r in failed:
        print(f"FAILED {r['model']}: {r['error']}")
    print(f"\n{passed} passed, {len(failed)} failed in {wall / 60:.1f} min on {args.threads} threads "
          f"(top-1 compared only on samples whose top-2 gap exceeds {TIE_FACTOR:g}x the max abs ONNX error)")
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1, default=str))
        tmp.replace(args.json)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
