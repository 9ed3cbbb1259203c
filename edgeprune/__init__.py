"""edgeprune: prune trained PyTorch CNNs for latency measured on the target device.

From Python: :func:`prune`, :func:`profile`, :func:`gate` (:mod:`edgeprune.api`), :func:`load_pruned`
and :class:`UserError`, the one-line error every bad argument raises.
"""

from edgeprune.errors import UserError

__version__ = "0.1.0"

__all__ = ["PruneResult", "UserError", "gate", "load_pruned", "profile", "prune", "__version__"]

_API = ("prune", "profile", "gate", "PruneResult", "PruneReport")


def __getattr__(name: str):
    # Lazy: `edgeprune agent` and the timing worker must run without importing torch.
    if name == "load_pruned":
        from edgeprune.space.pruned import load_pruned

        return load_pruned
    if name in _API:
        from edgeprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
