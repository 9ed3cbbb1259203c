"""edgeprune: prune trained PyTorch CNNs for latency measured on the target device."""

__version__ = "0.1.0"
