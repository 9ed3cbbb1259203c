"""Deployable artifacts (installed as ``edgeprune.exporters``)."""
