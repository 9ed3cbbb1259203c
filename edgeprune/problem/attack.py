"""The PGD attack's settings and the attack library, without torch (the CLI builds its parser
from these defaults before torch is imported)."""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import asdict, dataclass

from edgeprune.errors import UserError

# PGD as in the papers for images in [0, 1] (Madry et al.; CCSRP's training settings).
DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = 10
DEFAULT_ALPHA = 2 / 255
# CCSRP samples k = 5 sub-nets; Ds is a sample of the held-out images (CCSRP: 10 % of train).
DEFAULT_SUBNETS = 5
DEFAULT_SAMPLES = 500
# Test images the report's robust accuracy is measured on by a PGD attack on the model itself.
DEFAULT_TEST_SAMPLES = 1000


def require_art():
    """ART's PyTorch PGD, or a one-line error naming the package to install."""
    try:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise UserError(
            "robustness needs the Adversarial Robustness Toolbox: pip install 'adversarial-robustness-toolbox>=1.20'"
        ) from None
    return ProjectedGradientDescentPyTorch, PyTorchClassifier


@dataclass(frozen=True)
class Attack:
    """L∞ PGD with a random start: ``eps`` radius, ``steps`` iterations of size ``alpha``."""

    eps: float = DEFAULT_EPS
    steps: int = DEFAULT_STEPS
    alpha: float = DEFAULT_ALPHA

    def check(self) -> None:
        if not (math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise UserError(f"--attack-eps must be in (0, 1] (pixel scale, e.g. 0.0314 for 8/255), got {self.eps}")
        if not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise UserError(f"--attack-steps must be between 1 and 1000, got {self.steps}")
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= self.eps):
            raise UserError(f"--attack-alpha must be above 0 and at most --attack-eps ({self.eps:.4g}), got {self.alpha}")

    def describe(self) -> dict:
        return {"method": "PGD", "norm": "Linf", "random_start": True, **asdict(self), "library": _art_version()}


def _art_version() -> str:
    try:
        return f"adversarial-robustness-toolbox {importlib.metadata.version('adversarial-robustness-toolbox')}"
    except importlib.metadata.PackageNotFoundError:
        return "adversarial-robustness-toolbox (not installed)"
