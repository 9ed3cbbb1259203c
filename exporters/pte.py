"""PyTorch → ExecuTorch program (.pte bytes), lowered to the XNNPACK delegate, fp32: what the
``executorch`` backend measures (:mod:`edgeprune.profiling.executorch_backend`) and what an
ExecuTorch deployment loads.

``torch.export`` captures the eval-mode graph at the fixed input shape, ExecuTorch's
``to_edge_transform_and_lower`` hands every part XNNPACK supports to its partitioner, and
``to_executorch`` serialises the program. The search converts each candidate once, so the speed
matters: on mobilenet_v2 at 3x32x32 (this 2-core host, loaded by other jobs) the plain conversion
took 17-34 s, against 2.7-5.8 s for the ONNX export. Two things halve it without changing what
runs: BatchNorm folded into the convolutions in torch first (XNNPACK's own pass folds it too, but
later and slower: fewer nodes for every pass), and the edge dialect's IR validity check skipped
(the check re-verifies every node after each pass; ExecuTorch's own loader verifies the program).
Measured so: 7.5-17 s, and the bytes are the same as with the check (tiny_resnet, compared).
"""

from __future__ import annotations

import logging
import warnings

import torch

from edgeprune.errors import UserError
from edgeprune.exporters.eval_mode import evaluated

INSTALL_HINT = "pip install 'edgeprune[executorch]'"


def export_pte_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """``model`` in eval mode as an XNNPACK-delegated ExecuTorch program for a fixed
    ``input_shape`` (one input, ``forward``). The caller's model is left as it was: lowered from a
    CPU copy when it lives on another device (XNNPACK runs on the CPU), every module's training
    flag restored."""
    lower, partitioner, config = _executorch()
    with evaluated(model, cpu=True) as model:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and deprecation notices, per candidate
                program = torch.export.export(_folded(model), (torch.zeros(input_shape),))
                edge = lower(program, partitioner=[partitioner()], compile_config=config(_check_ir_validity=False))
                return bytes(edge.to_executorch().buffer)
        except Exception as exc:  # torch.export's and the lowering's errors are of many kinds; the model is the user's
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UserError(f"torch.export or ExecuTorch's XNNPACK lowering cannot convert this model to .pte: {reason}") from exc


def _folded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with every Conv→BatchNorm pair folded (eval mode), or ``model`` itself where
    torch.fx cannot trace it (data-dependent control flow): the lowering folds those later."""
    from torch.fx.experimental.optimization import fuse  # noqa: PLC0415 - only this converter uses it

    try:
        return fuse(model)
    except Exception:  # noqa: BLE001 - any tracing failure: the unfolded model converts the same
        return model


def _executorch():
    """ExecuTorch's lowering entry points, imported on first use (an extra, and slow to import)."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's deprecation notice on import
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: PLC0415
        from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower  # noqa: PLC0415
    except ImportError:
        raise UserError(f"converting to ExecuTorch (.pte) needs executorch, which is not installed; {INSTALL_HINT}") from None
    return to_edge_transform_and_lower, XnnpackPartitioner, EdgeCompileConfig
