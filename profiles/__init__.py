"""Target profiles shipped as package data (one YAML file per target)."""
