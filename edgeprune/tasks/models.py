"""Turn a model spec from the command line into an eval-mode CPU ``nn.Module``.

Four spec forms:

* ``path/to/model.pt`` -- a whole module saved with ``torch.save(model)``;
* ``torchvision:NAME`` -- an architecture from torchvision, optionally with ``weights=FILE``;
* ``timm:NAME`` -- an architecture from timm (optional extra ``edgeprune[timm]``), likewise;
* ``yolo:yolov8n.yaml`` or ``yolo:FILE.pt`` -- an ultralytics detector (``--task detection``);
* ``package.module:factory`` -- a function that returns the module, optionally with weights.

``load_model`` also returns a small JSON-able spec dict. A pruned model is stored as a plan plus
a state_dict (no pickles across trust boundaries), and rebuilding it starts from the original
model, chosen by the dict's ``kind`` (:func:`edgeprune.space.pruned.original_model`), never by
re-reading the spec string.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping

import torch
from torch import nn

from edgeprune.tasks.data import format_shape
from edgeprune.errors import UserError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PATH_LIKE = re.compile(r"[/\\]|\.(pt|pth|pkl|ckpt|bin)$")
_FORMS = "a torch.save()d model file, torchvision:NAME, timm:NAME, yolo:yolov8n.yaml, or package.module:factory"
# The one table of which model kinds run code: each kind a spec dict (plan.json) can name, and
# what building it runs besides library code (None: nothing). A yolo spec runs nothing only when
# it names a yaml shipped inside ultralytics (:func:`builds_without_code`).
MODEL_KINDS = {
    "torchvision": None,
    "timm": None,
    "yolo": "builds from a yaml file or unpickles a checkpoint, which can run code",
    "factory": "imports and runs the module",
    "file": "unpickles the model file, which runs any code in it",
    "object": "was a Python object handed to edgeprune.prune(), which no file can rebuild",
}
_LIBRARY_PREFIXES = tuple(f"{kind}:" for kind, runs in MODEL_KINDS.items() if runs is None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(
    spec: str, num_classes: int | None = None, weights: str | None = None
) -> tuple[nn.Module, dict]:
    """Load ``spec`` and return ``(model, spec_dict)``; the model is on CPU in eval mode.

    Security: a model *file* is read with ``torch.load(weights_only=False)``, which unpickles it
    and so runs any code the file contains. Load only files you trust; for untrusted weights use
    ``torchvision:NAME`` or ``package.module:factory`` with ``weights``, which are read with
    ``weights_only=True``.
    """
    if spec.startswith("torchvision:"):
        kind, model = "torchvision", torchvision_model(spec.removeprefix("torchvision:"), num_classes)
    elif spec.startswith("timm:"):
        kind, model = "timm", timm_model(spec.removeprefix("timm:"), num_classes)
    elif spec.startswith("yolo:"):
        from edgeprune.tasks import yolo

        kind, model = "yolo", yolo.build(spec.removeprefix("yolo:"), num_classes)
    elif spec.startswith("object:"):
        raise UserError(f"model {spec[:80]} was a Python object given to edgeprune.prune(); no file rebuilds it: pass the object again")
    elif os.path.exists(spec):
        kind, model = "file", file_model(spec)
        spec = os.path.abspath(spec)
    elif _FACTORY.match(spec) and not _PATH_LIKE.search(spec):
        kind, model = "factory", factory_model(spec, num_classes)
    elif _PATH_LIKE.search(spec):
        raise UserError(f"model file {spec} not found; pass the path of a torch.save()d model")
    else:
        raise UserError(f"cannot tell what model {spec!r} is; pass {_FORMS}")
    if weights is not None:
        load_weights(model, weights)
        weights = os.path.abspath(weights)
    if kind == "timm":
        model = deploy_form(model)  # after the weights: they are the training-time branches'
    model = model.cpu().eval()
    return model, {"kind": kind, "spec": spec, "num_classes": num_classes, "weights": weights}


def object_spec(model: nn.Module, num_classes: int | None) -> dict:
    """The spec dict of a model handed over as an object (the Python API): named by its class,
    so run.json and plan.json say what it was; rebuilding it needs the object again
    (``load_pruned(..., original=model)``)."""
    return {"kind": "object", "spec": f"object:{type(model).__name__}", "num_classes": num_classes, "weights": None}


def builds_without_code(spec: str) -> bool:
    """Whether building the model ``spec`` runs only library code, so a spec read from a file
    someone else wrote (plan.json, report.json, a checkpoint) may be built without
    ``--trust-model-code``. The one rule every reader of such files asks:

    * ``torchvision:NAME`` and ``timm:NAME``: an architecture from the library, by name;
    * ``yolo:NAME.yaml``: only a model yaml that ships inside the installed ultralytics package,
      resolved there by path (:func:`edgeprune.tasks.yolo.packaged_yaml`, never a search of the current
      folder: a yaml's ``activation:`` line is ``eval()``ed);
    * everything else (a model file, ``yolo:PATH.yaml``, ``yolo:FILE.pt``, ``package.module:factory``)
      imports, unpickles or evaluates something the file's author chose.
    """
    if spec.startswith(_LIBRARY_PREFIXES):
        return True
    if spec.startswith("yolo:"):
        from edgeprune.tasks import yolo

        return yolo.packaged_yaml(spec.removeprefix("yolo:")) is not None
    return False


def file_model(path: str) -> nn.Module:
    if os.path.isdir(path):
        raise UserError(f"model path {path} is a folder; pass the .pt file saved with torch.save(model)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling can fail in any way the pickled code chooses
        raise UserError(
            f"cannot load model file {path} ({_first_line(exc)}); save it with torch.save(model) "
            "from code importable here, or pass package.module:factory --weights FILE"
        ) from exc
    if isinstance(obj, Mapping):
        raise UserError(
            f"{path} holds a state_dict, not a model; pass torchvision:NAME --weights {path} "
            f"or package.module:factory --weights {path}"
        )
    if isinstance(obj, torch.jit.ScriptModule):
        raise UserError(
            f"{path} is TorchScript, which cannot be pruned; save the eager model with "
            "torch.save(model) instead of torch.jit.save"
        )
    if not isinstance(obj, nn.Module):
        raise UserError(
            f"{path} holds a {type(obj).__name__}, not a model; save it with torch.save(model)"
        )
    return obj


def torchvision_model(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5) or known[:5]
        raise UserError(
            f"torchvision has no classification model {name!r}; pass torchvision:NAME with NAME "
            f"such as {', '.join(close)}"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)


# The factories edgeprune ships, by the names its docs give them (short, and kept stable when the
# modules behind them move).
PUBLIC_FACTORY_MODULES = {"edgeprune.snn": "edgeprune.tasks.snn", "edgeprune.transfer": "edgeprune.tasks.transfer"}


def import_factory(spec: str, what: str = "model") -> Callable:
    """The function ``package.module:factory`` names, imported (which runs the module's code).

    The current directory is searched first, as ``python -m`` would, because the ``edgeprune``
    console script otherwise cannot see a file sitting next to the user.
    """
    if not _FACTORY.match(spec):
        raise UserError(f"{spec[:80]!r} is not package.module:factory; pass a factory spec such as my{what}s:build")
    module_name, attr = spec.split(":", 1)
    module_name = PUBLIC_FACTORY_MODULES.get(module_name, module_name)
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary module code
        raise UserError(
            f"cannot import {module_name} for {what} {spec} ({_first_line(exc)}); install it, run "
            "from the folder that holds it, or add that folder to PYTHONPATH"
        ) from exc
    finally:
        sys.path.remove(cwd)
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"{module_name} has no {attr}; pass package.module:factory naming a function in it")
    if not callable(factory):
        raise UserError(f"{spec} is not callable; pass package.module:factory naming a function")
    return factory


def timm_model(name: str, num_classes: int | None) -> nn.Module:
    """timm's ``name`` with random weights (nothing is downloaded) and ``num_classes`` outputs."""
    try:
        import timm
    except ImportError:
        raise UserError("timm:NAME models need timm; install it with pip install 'edgeprune[timm]'") from None
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6) or timm.list_models("mobilenetv3*")[:5]
        raise UserError(f"timm has no model {name!r}; pass timm:NAME with NAME such as {', '.join(close)}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes or 1000)


def deploy_form(model: nn.Module) -> nn.Module:
    """A timm model with its structural re-parameterisation applied (RepVGG, MobileOne, FastViT:
    the training-time parallel branches merged into one conv), the form that ships and so the form
    that is pruned and timed. Models without such blocks are returned unchanged."""
    if not any(hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy") for m in model.modules()):
        return model
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=True)


def factory_model(spec: str, num_classes: int | None) -> nn.Module:
    """Call the model factory ``spec`` names (with ``num_classes=`` only if given)."""
    factory = import_factory(spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    call = f"{spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        model = factory(**kwargs)
    except UserError:
        raise  # the factory's own one-line error (e.g. a missing optional extra) says it best
    except Exception as exc:  # the factory is user code
        raise UserError(
            f"{call} failed ({_first_line(exc)}); fix the factory"
            + (" or make it accept num_classes=" if kwargs else "")
        ) from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"{call} returned a {type(model).__name__}; make it return an nn.Module")
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line explanation of what does not fit."""
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} not found; pass --weights with a torch.save()d state_dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with non-tensor objects, ...
        raise UserError(
            f"cannot read weights {path} ({_first_line(exc)}); save them with "
            "torch.save(model.state_dict(), FILE)"
        ) from exc
    if not isinstance(state, Mapping):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict; save model.state_dict()")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {format_shape(tuple(state[k].shape))} vs {format_shape(tuple(own[k].shape))}"
        for k in own
        if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(items)} {what} (e.g. {items[0]})"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise UserError(
            f"weights {path} do not fit the model: {'; '.join(problems)}; pass the architecture "
            "(and --num-classes) the weights were saved from"
        )
    model.load_state_dict(state, strict=True)


def check_input(model: nn.Module, input_shape: tuple[int, ...], num_classes: int | None) -> int:
    """Run one zero image through ``model`` and return its number of outputs K.

    Catching a wrong input shape or head size here costs one forward pass; finding it inside the
    search would cost minutes and a traceback.
    """
    shape = format_shape(input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as exc:  # any layer may reject the shape, each with its own error type
        raise UserError(
            f"model cannot take input shape {shape} ({_first_line(exc)}); pass --input-shape "
            "CxHxW that the model accepts"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model returns {got} for input {shape}; it must return class scores [batch, classes]: "
            "give it a classifier head that flattens"
        )
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        raise UserError(
            f"model outputs {k} classes but the data has {num_classes}; pass a model with a "
            f"{num_classes}-class head (torchvision:NAME and factories take --num-classes)"
        )
    return k
