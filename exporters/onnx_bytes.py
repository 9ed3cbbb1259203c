"""Export a candidate network to ONNX bytes in memory, for measuring it and for the deployable
export (:mod:`edgeprune.exporters.onnx` checks and slims what this produces).

The search exports thousands of candidates, so this uses the TorchScript exporter
(``dynamo=False``): torch 2.15 deprecates it, but it still works and is about 10x faster than the
dynamo exporter on these CNNs. Nothing touches disk; the bytes go straight to a backend or agent.
It lives with the exporters, not in :mod:`edgeprune.profiling`, because it needs torch, which the
profiling side (and the device agent) never imports.
"""

import io
import warnings

import torch

from edgeprune.exporters.eval_mode import evaluated
from edgeprune.tasks import outputs


def export_onnx_bytes(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    opset: int,
    input_name: str = "input",
) -> bytes:
    """ONNX serialisation of ``model`` in eval mode for a fixed ``input_shape``.

    A classifier's one output is named ``logits``; a model returning a tuple or dict gets one
    ONNX output per tensor, named by :func:`edgeprune.tasks.outputs.names`.

    Every module's training flag is restored afterwards (not just the root's), so exporting in
    the middle of fine-tuning leaves e.g. deliberately frozen BatchNorm layers as they were.
    """
    # In eval + no_grad, nn.MultiheadAttention takes a fused fast path whose op
    # (aten::_native_multi_head_attention) has no ONNX export: trace the plain path instead.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    first = next(model.parameters(), None)
    dummy = torch.zeros(input_shape, device=first.device if first is not None else "cpu")
    buffer = io.BytesIO()
    try:
        with evaluated(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, repeated for every candidate
            torch.onnx.export(
                model,
                (dummy,),
                buffer,
                opset_version=opset,
                input_names=[input_name],
                output_names=outputs.names(model(dummy)),
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()
