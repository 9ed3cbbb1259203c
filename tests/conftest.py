"""Shared fixtures: every test gets its own latency cache folder, never the user's."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path_factory.mktemp("edgeprune-cache")))
