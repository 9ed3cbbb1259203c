"""Latency measurement on the target: backends, the protocol, the fingerprint and the cache."""
