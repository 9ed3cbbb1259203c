"""Runtimes that are extras (``pip install 'edgeprune[NAME]'``): found without importing them,
imported only by the process that times with them, and refused in one line with the install hint
where missing, so a user sees the fix instead of an ImportError's traceback."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.targets import Profile


def missing(profile: Profile, runtime: str, hint: str) -> str:
    return f"target '{profile.name}' runs on {runtime}, which is not installed; {hint}"


def require(profile: Profile, module: str, runtime: str, hint: str) -> None:
    """Refuse a profile whose runtime ``module`` is not installed (cheap: nothing imported)."""
    if importlib.util.find_spec(module) is None:
        raise UserError(missing(profile, runtime, hint))


def require_device(profile: Profile, runtime: str, device: str, what: str) -> None:
    """Refuse a profile whose ``provider`` is not the one ``device`` this backend runs (``what``)."""
    if profile.provider != device:
        raise UserError(f"target '{profile.name}' asks {runtime} for the device {profile.provider!r}; this backend runs {what}: set provider: {device}")


def load(profile: Profile, module: str, runtime: str, hint: str) -> Any:
    """The runtime's ``module``, imported; the one-line refusal where it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(missing(profile, runtime, hint)) from None
