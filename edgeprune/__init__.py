"""edgeprune: prune trained PyTorch CNNs for latency measured on the target device."""

__version__ = "0.1.0"

__all__ = ["load_pruned", "__version__"]


def __getattr__(name: str):
    # Lazy: `edgeprune agent` and the timing worker must run without importing torch.
    if name == "load_pruned":
        from edgeprune.space.pruned import load_pruned

        return load_pruned
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
