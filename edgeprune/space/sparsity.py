"""2:4 semi-structured weight sparsity (``prune --sparsity 2:4``), after the channel search.

The seeds evolve per-weight masks; the weight-level pattern an edge GPU accelerates is NVIDIA's
2:4 (Ampere and Orin sparse tensor cores): in every group of 4 consecutive weights along a layer's
input dimension, at most 2 are non-zero. TensorRT takes it where the layer's input channels (per
group) are a multiple of 4 and the engine is built with ``--sparsity=enable``; elsewhere (the
first convolution on 1 or 3 image channels, depthwise convolutions) the layer stays dense, and so
it does here: :func:`eligible` is TensorRT's rule.

The pattern is chosen by magnitude per group (the 2 largest of 4 stay; Mishra et al., "Accelerating
Sparse Deep Neural Networks", the recipe NVIDIA's ASP uses), then the network is fine-tuned with
the mask fixed (``torch.nn.utils.prune`` re-applies it in every forward pass, so gradients of the
removed weights never revive them), and the mask is made permanent: the exported ONNX holds the
zeros. :func:`onnx_share` checks the pattern in the exported file itself, independently of torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune


PATTERNS = {"2:4": (2, 4)}


@dataclass(frozen=True)
class Pattern:
    """At most ``keep`` non-zero weights in every ``group`` consecutive input weights."""

    keep: int
    group: int

    @property
    def name(self) -> str:
        return f"{self.keep}:{self.group}"


def eligible(module: nn.Module, pattern: Pattern) -> bool:
    """Whether TensorRT can run ``module`` sparse: a Conv2d whose input channels per group, or a
    Linear whose input features, are a multiple of the group size (and more than one group)."""
    if isinstance(module, nn.Conv2d):
        per_group = module.in_channels // module.groups
        return per_group >= pattern.group and per_group % pattern.group == 0
    if isinstance(module, nn.Linear):
        return module.in_features >= pattern.group and module.in_features % pattern.group == 0
    return False


def _grouped(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The weight as rows of ``group`` consecutive input weights: Conv2d [K, C, R, S] is grouped
    along C (as [K, R, S, C]), Linear [N, K] along K. Returns the rows and the permuted shape."""
    if weight.dim() == 4:
        moved = weight.permute(0, 2, 3, 1)
        return moved.reshape(-1, group), tuple(moved.shape)
    return weight.reshape(-1, group), tuple(weight.shape)


def _ungrouped(rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = rows.reshape(shape)
    return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def magnitude_mask(weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """1 for the ``keep`` largest-magnitude weights of every group, 0 for the rest."""
    rows, shape = _grouped(weight.detach(), pattern.group)
    top = rows.abs().topk(pattern.keep, dim=1).indices
    mask = torch.zeros_like(rows).scatter_(1, top, 1.0)
    return _ungrouped(mask, shape).contiguous()


def apply(model: nn.Module, pattern: Pattern) -> list[str]:
    """Mask every eligible layer by magnitude, in place, the mask re-applied in every forward
    pass until :func:`make_permanent`. Returns the masked layers' names."""
    names = []
    for name, module in model.named_modules():
        if eligible(module, pattern):
            prune.custom_from_mask(module, "weight", magnitude_mask(module.weight, pattern))
            names.append(name)
    return names


def make_permanent(model: nn.Module) -> None:
    """Fold every mask into its weight (the zeros stay), so the model saves and exports plainly."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def _satisfied(rows: np.ndarray, pattern: Pattern) -> tuple[int, int]:
    """(groups with at most ``keep`` non-zeros, groups)."""
    nonzero = np.count_nonzero(rows, axis=1)
    return int((nonzero <= pattern.keep).sum()), int(rows.shape[0])


def model_share(model: nn.Module, pattern: Pattern) -> dict:
    """The share of eligible weight groups of a torch model that hold the pattern, and how many
    of its weights are in eligible layers."""
    ok = total = weights = eligible_weights = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weights += module.weight.numel()
            if eligible(module, pattern):
                rows, _ = _grouped(module.weight.detach(), pattern.group)
                good, count = _satisfied(rows.numpy(), pattern)
                ok, total = ok + good, total + count
                eligible_weights += module.weight.numel()
    return {"groups_satisfying": ok, "groups": total, "share": ok / total if total else 1.0, "eligible_weight_share": eligible_weights / weights if weights else 0.0}


def onnx_share(onnx_bytes: bytes, pattern: Pattern) -> dict:
    """The same check on an exported file's Conv, Gemm and MatMul weights (initializers), grouped
    along each op's input dimension as TensorRT reads them; layers TensorRT keeps dense (input
    channels per group not a multiple of the group size) are counted apart."""
    model = onnx.load_from_string(onnx_bytes)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ok = total = dense_layers = sparse_layers = 0
    for node in model.graph.node:
        rows = _onnx_rows(node, weights, pattern.group)
        if rows is None:
            if node.op_type in ("Conv", "Gemm", "MatMul") and any(i in weights for i in node.input[1:2]):
                dense_layers += 1
            continue
        good, count = _satisfied(rows, pattern)
        ok, total = ok + good, total + count
        sparse_layers += 1
    return {"groups_satisfying": ok, "groups": total, "share": ok / total if total else 1.0, "sparse_layers": sparse_layers, "dense_layers": dense_layers}


def _onnx_rows(node: onnx.NodeProto, weights: dict[str, np.ndarray], group: int) -> np.ndarray | None:
    """The node's weight as rows of ``group`` input weights, or None when it is not eligible."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    w = weights[node.input[1]]
    if node.op_type == "Conv" and w.ndim == 4 and w.shape[1] >= group and w.shape[1] % group == 0:
        return np.transpose(w, (0, 2, 3, 1)).reshape(-1, group)
    if node.op_type == "Gemm" and w.ndim == 2:
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        w = w if transposed else w.T  # rows of [N, K]: K is the input dimension
        return w.reshape(-1, group) if w.shape[1] >= group and w.shape[1] % group == 0 else None
    if node.op_type == "MatMul" and w.ndim == 2:
        k = w.shape[0]  # x [.., K] @ w [K, N]
        return w.T.reshape(-1, group) if k >= group and k % group == 0 else None
    return None
