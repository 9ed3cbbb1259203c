"""The one place that turns a latency budget into the limits each stage of a prune works to.

A measurement on a shared CPU moves by a few percent between sessions, so a stage that picked a
network exactly at the budget would hand over one that the next, independent measurement puts
over it. Each stage therefore aims under the budget by a margin, and the margins are related:
the search aims lowest-but-one, widening (which keeps whatever step happens to measure low, so
favours lucky draws) aims lower still, and the confirmation of the pick sizes its margin by the
session spread it has seen. Everything that judges a latency against the budget asks this object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetPolicy:
    """Fractions of the budget; the defaults are what the shipped commands use."""

    # The search's constraint, and the limit a shortlisted candidate's fresh re-measure must meet.
    search_margin: float = 0.03
    # Widening keeps a step only within budget × (1 − widen_margin).
    widen_margin: float = 0.06
    # In the search's selection, latencies under focus × budget count as equal: the job delivers
    # one network at the budget, so the population should crowd just under it.
    focus: float = 0.9
    # The confirmation's margin: at least search_margin, and this many standard errors of the gap
    # between two independent checks of the same kind.
    confirm_z: float = 2.0

    @staticmethod
    def met(latency_ms: float, budget_ms: float) -> bool:
        """The verdict of every command that judges a delivered file (prune, ensemble, gate): its
        latency at most the budget, a latency equal to it included. The margins above only steer
        the stages towards a pick that will pass it."""
        return latency_ms <= budget_ms

    def search_limit(self, budget_ms: float) -> float:
        return budget_ms * (1 - self.search_margin)

    def widen_limit(self, budget_ms: float) -> float:
        return budget_ms * (1 - self.widen_margin)

    def confirmation_limit(self, budget_ms: float, gap_se: float) -> float:
        """The median of fresh sessions a pick must reach, given the standard error of the gap."""
        return budget_ms * (1 - max(self.search_margin, self.confirm_z * gap_se))

    def describe(self) -> dict[str, float]:
        """The fractions as report.json records them."""
        return {
            "search_limit": 1 - self.search_margin,
            "widen_limit": 1 - self.widen_margin,
            "focus": self.focus,
            "confirm_z": self.confirm_z,
        }


DEFAULT_POLICY = BudgetPolicy()


def percent(fraction: float) -> str:
    """``0.97`` → ``"97 %"``, for help texts that must say what the policy does."""
    return f"{100 * fraction:g} %"
