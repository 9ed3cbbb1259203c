"""Latency measurement on the target: the backend interface and its backends, the protocol, the
fingerprint, the cache and the latency surrogate.

Torch-free, so the device agent runs it without PyTorch: torch-side helpers (ONNX export, layer
descriptors of a model) live in :mod:`edgeprune.exporters` and :mod:`edgeprune.space.layers`. The rules
(no torch, no search, training or CLI, no import cycles) are import-linter contracts in
pyproject.toml, checked by ``lint-imports``.
"""
