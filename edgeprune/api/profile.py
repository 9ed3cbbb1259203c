"""``edgeprune.profile(model, target=...)``: one model's latency on a target, as ``edgeprune profile``
measures it (the same Profiler, cache and protocol), returned as a
:class:`~edgeprune.jobs.profile.ProfileResult` instead of printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune.errors import UserError


def profile(
    model: Any, target: str = "x86-cpu", *, example_input: Any = None, repeats: int = 1, fresh: bool = False,
    cache: str | Path | None = None, no_cache: bool = False, allow_external_data: bool = False,
):
    """Time ``model`` on ``target``: an ONNX file's path, or an ``nn.Module`` with its
    ``example_input`` (exported to ONNX at that shape, as the search exports candidates).
    ``repeats``/``fresh``/``cache``/``no_cache`` as the command's options; a cached answer is
    returned unless ``fresh`` or ``repeats`` > 1."""
    from edgeprune.jobs.profile import profile_bytes, require_onnx_target
    from edgeprune.profiling.targets import load_profile

    settings = load_profile(target)
    require_onnx_target(settings)
    if isinstance(model, (str, Path)):
        from edgeprune.profiling.onnx_file import load_onnx

        blob, shape = load_onnx(str(model), batch=settings.batch, allow_external_data=allow_external_data)
        name = str(model)
    else:
        blob, shape, name = _exported(model, example_input, settings)
    return profile_bytes(blob, shape, settings, name, repeats=repeats, fresh=fresh, cache=str(cache) if cache else None, no_cache=no_cache)


def _exported(model, example_input, settings) -> tuple[bytes, tuple[int, ...], str]:
    from torch import nn

    from edgeprune.exporters.onnx_bytes import export_onnx_bytes

    if not isinstance(model, nn.Module):
        raise UserError(f"model is a {type(model).__name__}; pass the path of an ONNX file or a torch.nn.Module with example_input=")
    if example_input is None:
        raise UserError("profiling a torch.nn.Module needs example_input= (one input tensor, e.g. torch.zeros(1, 3, 224, 224))")
    shape = (settings.batch, *tuple(example_input.shape)[1:])
    return export_onnx_bytes(model, shape, settings.opset), shape, f"object:{type(model).__name__}"
