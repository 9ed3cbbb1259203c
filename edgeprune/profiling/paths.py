"""The folder that holds what edgeprune measured on this host: the latency cache and TensorRT's
engines. One function, so the cache and the TensorRT backend agree on it without importing each
other."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_folder() -> Path:
    """``<user cache dir>/edgeprune``; ``EDGEPRUNE_CACHE_DIR`` moves it."""
    return Path(os.environ.get("EDGEPRUNE_CACHE_DIR") or platformdirs.user_cache_dir("edgeprune"))
