"""YOLO detectors through ultralytics (optional extra ``edgeprune[yolo]``; ultralytics is AGPL-3.0:
edgeprune depends on it and never copies its code).

What this module settles, each the cause of a common "YOLO pruning fails" report:

* **C2f's split.** C2f computes ``cv1(x).chunk(2)``, which assumes two equal halves; Torch-Pruning
  cannot keep that true, so every C2f (and C3k2, which shares its forward) is rewritten as
  :class:`SplitFreeC2f` (two 1×1 convs in place of one conv and a split, weights copied, outputs
  identical) before the space is built.
* **The Detect head.** Its box and class output convs are output layers (never pruned; the DFL
  integral behind them is a frozen conv that :func:`edgeprune.tasks.outputs.output_layers` walks through);
  its hidden convs and everything feeding it are prunable.
* **What is pruned, timed and exported** is :class:`YoloNet`: the DetectionModel with its head in
  export form, one tensor ``output0``. A head with a one-to-one branch (YOLO26) ships end-to-end
  by default, as it is deployed: ``[N, max_det, 6]`` (x1, y1, x2, y2 in pixels, score, class; no
  NMS to run), the layout ``yolo export format=onnx nms=False`` writes. The dense head (every
  family's only head before YOLO26) is ``[N, 4 + classes, anchors]`` (cx, cy, w, h, then class
  scores; NMS still to run), the layout ``yolo export format=onnx`` writes. ``--yolo-head`` picks.
* **Both branches stay prunable.** The end-to-end output is a top-k over the one-to-one branch
  only, so the one-to-many branch (which ultralytics' loss still trains) is invisible from it;
  :meth:`YoloNet.coupling_outputs` hands the channel-coupling trace every branch's raw outputs.
* **Loading back into ultralytics.** :func:`checkpoint_bytes` writes the checkpoint layout
  ``ultralytics.YOLO(path)`` reads, with the pruned module inside; ultralytics' own trainer and
  validator run on the pruned module in place (:func:`ultralytics_form`), never rebuilding it from
  its yaml at the original width. Every :class:`SplitFreeC2f` whose halves kept the same width is
  turned back into ultralytics' own class first (:func:`to_ultralytics`), so a checkpoint without
  unequal halves loads with ultralytics alone; one with unequal halves (ultralytics' ``chunk(2)``
  cannot express them) keeps edgeprune's class and needs edgeprune importable to load
  (:func:`edgeprune_blocks` names them).
* **Offline.** ultralytics checks fonts, AMP weights and package updates over the network; the
  environment set in :func:`require_ultralytics` and the arguments used here turn all of it off.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import re
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import UserError

OUTPUT = "output0"
# --yolo-head: auto is end2end for a head with a one-to-one branch (YOLO26), else dense.
HEADS = ("auto", "end2end", "dense")


def require_ultralytics():
    """Import ultralytics set up for offline use, or say how to install it."""
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    if "YOLO_CONFIG_DIR" not in os.environ:
        from platformdirs import user_cache_dir

        os.environ["YOLO_CONFIG_DIR"] = os.path.join(user_cache_dir("edgeprune"), "ultralytics")
    try:
        import ultralytics
        import ultralytics.data.utils as data_utils
    except ImportError:
        raise UserError("YOLO detection needs ultralytics; install it with pip install 'edgeprune[yolo]'") from None
    data_utils.check_font = lambda *a, **k: None  # it fetches Arial.ttf from the network for plots we never draw
    return ultralytics


class SplitFreeC2f(nn.Module):
    """C2f (or C3k2) with ``cv1`` + ``chunk(2)`` replaced by two parallel 1×1 convs ``cv0``/``cv1``,
    so each half can be pruned on its own; ``cv2`` and the blocks ``m`` are the original modules.
    Built by :meth:`of`, which copies the halves of the original ``cv1`` (outputs are identical);
    :meth:`native` turns it back into ``origin``, the ultralytics class it replaced, where it can."""

    def __init__(self, cv0: nn.Module, cv1: nn.Module, cv2: nn.Module, m: nn.ModuleList, origin: type | None = None):
        super().__init__()
        self.cv0, self.cv1, self.cv2, self.m = cv0, cv1, cv2, m
        self.origin = origin  # C2f, C3k2, ...: a class reference, pickled by name

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(block(y[-1]) for block in self.m)
        return self.cv2(torch.cat(y, 1))

    @classmethod
    def of(cls, old: nn.Module) -> "SplitFreeC2f":
        from ultralytics.nn.modules import Conv

        conv, bn = old.cv1.conv, old.cv1.bn
        half = conv.out_channels // 2
        halves = []
        for part in (slice(0, half), slice(half, 2 * half)):
            new = Conv(conv.in_channels, half, conv.kernel_size[0], conv.stride[0], act=old.cv1.act)
            new.conv.weight.data.copy_(conv.weight.data[part])
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn, key).data.copy_(getattr(bn, key).data[part])
            new.bn.eps, new.bn.momentum = bn.eps, bn.momentum
            halves.append(new)
        module = cls(halves[0], halves[1], old.cv2, old.m, type(old))
        _copy_bookkeeping(old, module)
        return module.train(old.training)  # new convs start in train mode: BatchNorm would use batch statistics

    @property
    def equal_halves(self) -> bool:
        """Whether ultralytics' forward (``cv1(x).chunk(2, 1)``, or ``split((c, c))``) can compute
        this block: only when both halves kept the same width."""
        return self.cv0.conv.out_channels == self.cv1.conv.out_channels

    def native(self) -> nn.Module | None:
        """The same block as an instance of ``origin`` (one ``cv1`` holding both halves' weights,
        ``c`` its half width, the attributes ultralytics' forward reads), computing the same
        outputs; None when the halves differ in width. A block unpickled from a file written
        before ``origin`` was recorded becomes a C2f, whose forward it has."""
        if not self.equal_halves:
            return None
        from ultralytics.nn.modules import C2f

        origin = getattr(self, "origin", None) or C2f
        block = origin.__new__(origin)
        nn.Module.__init__(block)  # ultralytics' __init__ would build fresh convs at the yaml's width
        block.c, block.cv1, block.cv2, block.m = self.cv0.conv.out_channels, _stacked(self.cv0, self.cv1), self.cv2, self.m
        _copy_bookkeeping(self, block)
        return block.train(self.training)


def _copy_bookkeeping(old: nn.Module, new: nn.Module) -> None:
    for attr in ("i", "f", "type", "np"):  # ultralytics' graph bookkeeping (BaseModel._predict_once)
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))


def _stacked(first: nn.Module, second: nn.Module) -> nn.Module:
    """One ultralytics ``Conv`` whose output channels are ``first``'s then ``second``'s (two
    1×1 convs on the same input, each followed by its own BatchNorm channels)."""
    conv = copy.deepcopy(first)
    pairs = [("conv", "weight")] + [("bn", key) for key in ("weight", "bias", "running_mean", "running_var")]
    for part, key in pairs:
        a, b = getattr(getattr(first, part), key), getattr(getattr(second, part), key)
        joined = torch.cat([a.detach(), b.detach()])
        if isinstance(a, nn.Parameter):
            joined = nn.Parameter(joined, requires_grad=a.requires_grad)
        setattr(getattr(conv, part), key, joined)
    conv.conv.out_channels = conv.bn.num_features = first.conv.out_channels + second.conv.out_channels
    return conv


def split_free(module: nn.Module) -> int:
    """Rewrite every C2f-style block under ``module`` in place; returns how many."""
    from ultralytics.nn.modules import C2f

    count = 0
    for name, child in module.named_children():
        if isinstance(child, C2f) and type(child).forward is C2f.forward:
            setattr(module, name, SplitFreeC2f.of(child))
            count += 1
        else:
            count += split_free(child)
    return count


def to_ultralytics(module: nn.Module) -> list[str]:
    """Turn every :class:`SplitFreeC2f` under ``module`` whose halves are equal back into
    ultralytics' own class, in place (:meth:`SplitFreeC2f.native`); returns the names of the
    blocks left as edgeprune's class (unequal halves), for which loading needs edgeprune."""
    for name, child in list(module.named_modules()):
        if isinstance(child, SplitFreeC2f) and (block := child.native()) is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent), leaf, block)
    return edgeprune_blocks(module)


def edgeprune_blocks(module: nn.Module) -> list[str]:
    """Names of the blocks of ``module`` ultralytics' classes cannot express (a C2f whose two
    halves kept different widths): a checkpoint holding one needs edgeprune importable to load."""
    return [name for name, m in module.named_modules() if isinstance(m, SplitFreeC2f) and not m.equal_halves]


def _heads(model: nn.Module) -> list[nn.Module]:
    from ultralytics.nn.modules.head import Detect

    return [m for m in model.modules() if isinstance(m, Detect)]


def _one2one(head: nn.Module) -> bool:
    return getattr(head, "one2one_cv2", None) is not None


class YoloNet(nn.Module):
    """The DetectionModel ``model`` as edgeprune prunes, times and exports it: its head in export
    form, returning ``{"output0": ...}`` in the layout ``head`` picks (see the module doc)."""

    def __init__(self, model: nn.Module, head: str = "auto"):
        super().__init__()
        self.model = model
        for detect in _heads(model):
            detect.export, detect.format, detect.dynamic, detect.shape = True, "onnx", False, None
        self.set_head(head)

    def set_head(self, head: str) -> None:
        """End-to-end (``[N, max_det, 6]``, ultralytics' ``nms=False`` export) or dense output."""
        if head not in HEADS:
            raise UserError(f"unknown --yolo-head {head!r}; choose {', '.join(HEADS)}")
        heads = _heads(self.model)
        capable = bool(heads) and all(_one2one(h) for h in heads)
        if head == "end2end" and not capable:
            raise UserError("--yolo-head end2end needs a head with a one-to-one (NMS-free) branch, as YOLO26 has; this model's head is dense only: drop the flag")
        self.end2end = capable if head == "auto" else head == "end2end"
        for detect in heads:
            detect.end2end = self.end2end

    @property
    def head(self) -> str:
        return "end2end" if self.end2end else "dense"

    def forward(self, x):
        return {OUTPUT: self.model(x)}

    def coupling_outputs(self, x) -> list[torch.Tensor]:
        """Every head branch's raw box and class maps: what the channel-coupling trace follows
        (:func:`edgeprune.tasks.outputs.traced`), so a branch the shipped output leaves out (the
        one-to-many branch behind the end-to-end top-k, or the one-to-one branch behind the dense
        output) is pruned with the layers feeding it."""
        head = self.model.model[-1]
        branches = [head.one2many] + ([head.one2one] if _one2one(head) else [])
        # In place of the head's forward for one call: each conv runs once, as Torch-Pruning expects.
        head.forward = lambda feats: [head.forward_head(feats, **b)[key] for b in branches for key in ("boxes", "scores")]
        try:
            return self.model(x)
        finally:
            del head.forward


@contextlib.contextmanager
def ultralytics_form(net: YoloNet):
    """``net.model`` as ultralytics' trainer and validator expect it (head not in export form,
    every weight but DFL's trainable), restored afterwards."""
    heads = _heads(net.model)
    for head in heads:
        head.export, head.shape = False, None
    try:
        yield net.model
    finally:
        for head in heads:
            head.export, head.shape = True, None


# A bare model yaml name as ultralytics ships them (yolov8n.yaml, yolo11s.yaml, yolov8n-p6.yaml).
_BARE_YAML = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.ya?ml$")


def _scaled_names(name: str) -> tuple[str, str]:
    """The names ultralytics' yaml_model_load tries for ``name``: the P6 spelling (``yolov8n6`` ->
    ``yolov8n-p6``), then its "unified" form (``yolov8n.yaml`` is ``yolov8.yaml`` at scale n)."""
    stem, suffix = name.rsplit(".", 1)
    if re.fullmatch(r"yolov[58][nsmlx]6", stem):
        name = re.sub(r"(\d+)([nslmx])6(.+)?$", r"\1\2-p6\3", stem) + "." + suffix
    return name, re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)


def packaged_yaml(name: str) -> Path | None:
    """The model yaml a bare ``name`` (``yolov8n.yaml``) denotes inside the installed ultralytics
    package (``ultralytics/cfg/models/**``), resolved by path; None when ``name`` is a path or no
    shipped yaml has that name.

    Never ultralytics' own ``check_yaml``: it looks in the current folder first (also under the
    unified name, ``yolov8.yaml`` for ``yolov8n.yaml``), and a model yaml runs code (its
    ``activation:`` line is ``eval()``ed), so a yaml planted in the working folder would run.
    """
    if not _BARE_YAML.match(name):
        return None
    found = importlib.util.find_spec("ultralytics")
    if found is None or not found.submodule_search_locations:
        raise UserError("YOLO detection needs ultralytics; install it with pip install 'edgeprune[yolo]'")
    root = (Path(next(iter(found.submodule_search_locations))) / "cfg" / "models").resolve()
    for candidate in dict.fromkeys(_scaled_names(name)):
        hits = sorted(p.resolve() for p in root.rglob(candidate) if p.is_file())
        if len(hits) == 1 and hits[0].is_relative_to(root):
            return hits[0]
    return None


def _model_config(name: str, path: Path) -> dict:
    """What ultralytics' yaml_model_load returns for ``name``, read from the file ``path`` itself
    (no search): the yaml's dict with the scale its name asks for."""
    from ultralytics.nn.tasks import guess_model_scale
    from ultralytics.utils import YAML

    try:
        config = YAML.load(path)
    except Exception as exc:  # yaml errors of every kind
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"ultralytics cannot read {path} ({first}); pass a detection yaml such as yolov8n.yaml") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a model yaml; pass a detection yaml such as yolov8n.yaml")
    scaled = _scaled_names(Path(name).name)[0]
    return {**config, "scale": guess_model_scale(scaled), "yaml_file": str(Path(name).with_name(scaled))}


def build(spec: str, num_classes: int | None, names: dict[int, str] | None = None, head: str = "auto") -> YoloNet:
    """A model yaml built with random weights, or an ultralytics checkpoint ``.pt`` (unpickled:
    your own files only), as a YoloNet. A bare yaml name (``yolov8n.yaml``) is one that ships
    with ultralytics, found by :func:`packaged_yaml` (never in the current folder); your own yaml
    is named by its path (``./my.yaml``)."""
    require_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    if spec.endswith((".yaml", ".yml")):
        if "/" in spec or os.sep in spec:
            if not os.path.isfile(spec):
                raise UserError(f"model yaml {spec} not found; pass the path of a detection yaml, or a shipped one such as yolov8n.yaml")
            config = _model_config(spec, Path(spec))
        else:
            shipped = packaged_yaml(spec)
            if shipped is None:
                raise UserError(
                    f"{spec[:100]} is not a model yaml that ships with ultralytics; pass one such as yolov8n.yaml, "
                    f"or your own yaml by its path (yolo:./{spec[:100]})"
                )
            config = _model_config(spec, shipped)
        try:
            model = DetectionModel(config, nc=num_classes, verbose=False)
        except (FileNotFoundError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(f"ultralytics cannot build {spec} ({exc}); pass a detection yaml such as yolov8n.yaml or yolov8s.yaml") from None
    else:
        if not os.path.isfile(spec):
            raise UserError(f"YOLO checkpoint {spec} not found; pass a .pt written by ultralytics or edgeprune, or a yaml such as yolov8n.yaml")
        model, _ = load_checkpoint(spec)
        if not isinstance(model, DetectionModel):
            raise UserError(f"{spec} holds a {type(model).__name__}, not a detection model; pass a YOLO detection checkpoint")
        if num_classes is not None and int(model.nc) != num_classes:
            raise UserError(f"{spec} detects {model.nc} classes but the data has {num_classes}; pass a checkpoint trained on this data")
    model = model.float().cpu()
    split_free(model)
    for name, p in model.named_parameters():
        p.requires_grad_(".dfl" not in name)  # DFL's conv is a fixed integral, never trained
    if names is not None:
        model.names = dict(names)
    return YoloNet(model, head).eval()


def checkpoint_bytes(net: YoloNet, data_yaml: str, imgsz: int) -> bytes:
    """The pruned detector as the checkpoint ``ultralytics.YOLO(path)`` loads (then ``.val()``,
    ``.predict()``, ``.export()`` and ``.train()`` work on it). It pickles the module with every
    C2f-style block whose halves are equal back in ultralytics' class (:func:`to_ultralytics`): the
    file then loads with ultralytics alone; a block with unequal halves stays edgeprune's
    :class:`SplitFreeC2f`, and loading needs edgeprune importable (:func:`edgeprune_blocks`)."""
    import ultralytics
    from ultralytics.utils import DEFAULT_CFG_DICT

    with ultralytics_form(net) as model:
        model = copy.deepcopy(model).eval()
    to_ultralytics(model)
    model.criterion = None
    for p in model.parameters():
        p.requires_grad_(False)
    train_args = {"data": str(data_yaml), "imgsz": int(imgsz), "task": "detect"}
    model.args = {**DEFAULT_CFG_DICT, **train_args}
    buffer = io.BytesIO()
    torch.save({
        "model": model, "ema": None, "train_args": train_args,
        "date": datetime.now().isoformat(), "version": ultralytics.__version__,
    }, buffer)
    return buffer.getvalue()
