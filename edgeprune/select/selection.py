"""Selection, the stage after the search: from its candidates to the one network a round delivers.

The GA ranks networks by adaptive-BN accuracy, which at heavy pruning says little about how a
network recovers under fine-tuning, and by one measurement each, which a lucky draw can sneak
under the budget. So the pick is made in steps: seed the search with what uniform pruning would
deliver and with profiles that prune wide layers harder (:func:`ratio_seeds`), re-measure the
seeds and the most accurate feasible candidates in fresh sessions (:func:`shortlist`), give each
a short fine-tune and rank them by how well they recover (:func:`refine`), take the best that
holds its budget in several fresh sessions with a margin sized by their spread
(:func:`confirmed`), then spend the latency the pick leaves under the budget (:func:`widen`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

from torch import nn

from edgeprune.select.budget import BudgetPolicy
from edgeprune.records import Candidate, Choice, Group
from edgeprune.problem.pruning import PruningProblem
from edgeprune.progress import console
from edgeprune.space.channels import macs_and_params

# How many candidates that fail their fresh re-measure the shortlist may skip.
_PICK_TRIES = 5


def shortlist(
    problem: PruningProblem, candidates: list[Candidate], limit_ms: float, size: int, seeds: list[Candidate] = ()
) -> list[Candidate]:
    """The feasible ``seeds``, in order, each unless a seed already taken is at least as wide in
    every group; then up to ``size`` of the most accurate other feasible candidates. Each one's
    *fresh* re-measure must also be within ``limit_ms`` (the search's limit); the fastest
    measured candidate when none is. Feasible includes the problem's memory limit, if any
    (memory is measured once: sessions agree on it within 1 MB).

    The seeds (:func:`ratio_seeds`: each profile's widest ratio within the limit, then its next
    narrower one) always get a short tune: adaptive-BN accuracy, which ranks the rest, is near
    chance at heavy pruning and would leave them out by accident. A profile's narrower seed
    stands in only when its widest one fails the re-measure. A fresh session guards against a
    lucky measurement sneaking a candidate under the limit. The re-measure is held to the
    search's limit, not to the budget: held to the budget, a pick that re-measured within it by
    a hair then measured 0.3 % over it in the benchmark's independent check on a noisy VM. A
    candidate the screen floored (:mod:`edgeprune.problem.screening`) competes too: the
    re-measure is its first measurement, and the candidate returned carries it.
    """
    def fits(c: Candidate) -> bool:
        return (c.floored or not c.predicted) and c.latency.median_ms <= limit_ms and problem.fits_memory(c)

    def passed(c: Candidate) -> Candidate | None:
        """``c`` when its fresh re-measure is within the limit (a floored one, never timed in
        the search, carrying that measurement from now on), else None."""
        fresh = problem.latency_of(c.widths, fresh=True)
        if fresh.median_ms > limit_ms:
            console.print(f"  re-measure of a candidate: {fresh.median_ms:.4f} ms > the search limit {limit_ms:.4f} ms; trying the next one")
            return None
        return dataclasses.replace(c, latency=fresh, predicted=False, floored=False) if c.floored else c

    chosen: list[Candidate] = []
    for cand in (c for c in seeds if fits(c)):
        covered = any(all(x <= y for x, y in zip(cand.widths, taken.widths)) for taken in chosen)
        if not covered and (kept := passed(cand)):
            chosen.append(kept)
    seeded = {c.choice for c in seeds}
    ranked = sorted((c for c in candidates if fits(c) and c.choice not in seeded), key=lambda c: (-problem.quality(c), c.latency.median_ms))
    taken = 0
    for tries, cand in enumerate(ranked):
        if taken == size or (tries >= size + _PICK_TRIES and taken):
            break
        if kept := passed(cand):
            chosen.append(kept)
            taken += 1
    return chosen or [min((c for c in candidates if not c.predicted), key=lambda c: (not problem.fits_memory(c), c.latency.median_ms))]


def refine(
    epochs: float, seed: int, problem: PruningProblem, teacher: nn.Module, shortlisted: list[Candidate]
) -> tuple[list[Candidate], list[dict]]:
    """The shortlisted candidates, best after a short fine-tune first (NetAdapt's short-term
    fine-tune), with every candidate's numbers. "Best" is the problem's quality: accuracy, or
    the mean of accuracy and robust accuracy where robustness is an objective.

    Adaptive-BN accuracy ranks networks as they are right after the cut; which one recovers best
    under fine-tuning is what the job delivers. Every candidate gets the same ``epochs`` of the
    task's fine-tune recipe, same seed and batch order, and the task's score. The
    picked network's final fine-tune starts again from its pruned weights, so it gets exactly
    ``finetune_epochs`` like any baseline it is compared with.
    """
    if len(shortlisted) == 1 or epochs <= 0:
        return list(shortlisted), []
    rows, qualities = [], []
    for cand, measured in zip(shortlisted, _short_tunes(epochs, seed, problem, teacher, shortlisted)):
        rows.append({
            "widths": list(cand.widths),
            "latency_ms": cand.latency.median_ms,
            "holdout_accuracy_adaptive_bn": cand.accuracy,
            "holdout_accuracy_short_tune": measured["accuracy"],
            **({"holdout_scores_short_tune": {k: v for k, v in measured.items() if k not in ("accuracy", "quality")},
                "quality_short_tune": measured["quality"]} if problem.model_scores else {}),
        })
        qualities.append(measured["quality"])
    order = sorted(range(len(rows)), key=lambda i: (-qualities[i], rows[i]["latency_ms"]))
    return [shortlisted[i] for i in order], rows


def _short_tunes(epochs: float, seed: int, problem: PruningProblem, teacher: nn.Module, shortlisted: list[Candidate]) -> list[dict[str, float]]:
    """Each candidate's quality after the short tune: on the problem's workers at once, or here
    one after the other (same recipe, same seed, same numbers)."""
    plans = [problem.space.plan_of(c.choice) for c in shortlisted]
    if problem.workers is not None:
        tuned = problem.workers.short_tune(problem.space, problem.task, problem.model_scores, teacher, plans, epochs, seed)
        return [problem.with_quality(values) for values in tuned]
    measured = []
    for i, plan in enumerate(plans, 1):
        model = problem.space.shrink(plan)
        problem.task.fine_tune(model, teacher, epochs, seed, f"short tune {i}/{len(plans)}")
        measured.append(problem.model_quality(model))
    return measured


# The final check (:func:`confirm`): how many fresh sessions time the pick, and the least
# session-to-session spread assumed (how far under the budget they must land: BudgetPolicy).
CONFIRM_SESSIONS = 5
MIN_SESSION_SPREAD = 0.01


class SessionNoise:
    """How far one fresh session's latency strays from the median of the sessions timed with it,
    pooled over a round's confirmations: a robust relative sigma (1.4826 x the median absolute
    log-deviation), never below ``MIN_SESSION_SPREAD``.

    The spread between sessions, not within one, is what moves a pick over its budget, and it
    depends on the machine and the moment as much as on the model: on the shared benchmark VM
    one resnet18 network measured from 0.169 to 0.192 ms over five sessions of 0.6 s each while
    other tenants were busy, and within 0.6 % (CV) at a quiet moment (its weights are about the
    size of the shared L3), while mobilenet_v2's sessions stayed within 1.3-2.5 % during the
    same benchmark. Busy and quiet spells last minutes, so sessions timed back to back see one
    of them: this sigma is a floor for the spread a later check will meet, not a bound.
    """

    def __init__(self) -> None:
        self.deviations: list[float] = []

    def add(self, sessions_ms: list[float]) -> None:
        mid = statistics.median(sessions_ms)
        self.deviations.extend(abs(math.log(ms / mid)) for ms in sessions_ms)

    @property
    def spread(self) -> float:
        if not self.deviations:
            return MIN_SESSION_SPREAD
        return max(MIN_SESSION_SPREAD, 1.4826 * statistics.median(self.deviations))


@dataclasses.dataclass
class Confirmation:
    """A pick timed in fresh sessions against the latency its median must stay within."""

    sessions_ms: list[float]
    spread: float
    limit_ms: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.sessions_ms)

    @property
    def passed(self) -> bool:
        return self.median_ms <= self.limit_ms

    def to_dict(self) -> dict:
        return {
            "sessions_ms": self.sessions_ms, "median_ms": self.median_ms, "session_spread": self.spread,
            "limit_ms": self.limit_ms, "passed": self.passed,
        }


def confirm(
    problem: PruningProblem, widths: tuple[int, ...], budget_ms: float, policy: BudgetPolicy, noise: SessionNoise,
    sessions: int = CONFIRM_SESSIONS,
) -> Confirmation:
    """``widths`` timed in ``sessions`` fresh sessions; it passes when their median is within the
    budget less the larger of the policy's search margin and ``policy.confirm_z`` standard errors
    of the gap to an independent check of the same kind (a CI gate, a benchmark).

    A fixed margin suits one machine's noise and not another's: at 3 %, a resnet18 pick whose
    three fresh sessions had a median within the search's limit re-measured 0.7 % over its
    budget in the benchmark, while MobileNetV2 picks on the same VM re-measured within 1 %. The
    median of n sessions has a standard error of about 1.25 sigma / sqrt(n), and two such checks
    differ by sqrt(2) times that, so the margin grows with the spread ``noise`` has seen.

    The sessions are taken a majority at a time: once a majority of them is on one side of the
    limit (as that spread sets it), the others cannot move the median across, so they are not
    taken. A clear pick costs 3 sessions instead of 5; on a farm the majority runs at once.
    """
    majority = sessions // 2 + 1
    runs = [s.median_ms for s in problem.fresh_sessions(widths, majority)]
    limit = _confirmation_limit(noise, runs, sessions, budget_ms, policy)
    if max(sum(ms <= limit for ms in runs), sum(ms > limit for ms in runs)) < majority:
        runs += [s.median_ms for s in problem.fresh_sessions(widths, sessions - majority)]
    noise.add(runs)
    return Confirmation(runs, noise.spread, _confirmation_limit(noise, [], sessions, budget_ms, policy))


def _confirmation_limit(noise: SessionNoise, runs: list[float], sessions: int, budget_ms: float, policy: BudgetPolicy) -> float:
    """The limit a median of ``sessions`` fresh sessions must reach, with ``runs`` counted in
    the spread ``noise`` has seen."""
    seen = SessionNoise()
    seen.deviations = list(noise.deviations)
    if runs:
        seen.add(runs)
    gap_se = 1.25 * seen.spread * math.sqrt(2 / sessions)
    return policy.confirmation_limit(budget_ms, gap_se)


def confirmed(
    problem: PruningProblem, ranked: list[Candidate], budget_ms: float, policy: BudgetPolicy, noise: SessionNoise
) -> tuple[Candidate, Confirmation]:
    """The first of ``ranked`` (best first) that passes :func:`confirm`; when none does, the one
    whose sessions measured fastest, with a warning that its budget is not assured."""
    tried = []
    for cand in ranked:
        check = confirm(problem, cand.widths, budget_ms, policy, noise)
        if check.passed:
            return cand, check
        console.print(
            f"  confirmation: median of {len(check.sessions_ms)} fresh sessions {check.median_ms:.4f} ms > "
            f"{check.limit_ms:.4f} ms (budget less {1 - check.limit_ms / budget_ms:.1%} for noise); trying the next one"
        )
        tried.append((cand, check))
    cand, check = min(tried, key=lambda t: t[1].median_ms)
    console.print(
        f"[yellow]warning:[/yellow] no shortlisted network stays within {check.limit_ms:.4f} ms in fresh sessions; "
        f"keeping the fastest ({check.median_ms:.4f} ms), which may measure over the budget {budget_ms:.4f} ms"
    )
    return cand, check


# Width-scaling exponents of the seeds (see ChannelSpace.scaled_indices): uniform pruning, and
# two profiles that take more from the wide groups.
SEED_ALPHAS = (0.0, 1.0, 2.0)


def ratio_seeds(problem: PruningProblem, budget_ms: float, alphas: tuple[float, ...] = SEED_ALPHAS) -> list[list[int]]:
    """Width indices, for each exponent in ``alphas``, of the widest ratio (0.05 grid) of
    :meth:`ChannelSpace.scaled_indices` whose measured latency meets ``budget_ms`` and of the
    next narrower ratio (in case the widest fails its re-measure).

    ``alpha = 0`` is the answer uniform pruning would give, so the search starts from the best
    simple baseline. The other profiles prune wide groups harder; which one recovers best is
    model- and target-specific (on ORT CPU at 0.5x, MobileNetV2 gained 2.1 pp at ``alpha = 1``
    and 2.3 pp at ``alpha = 2``, ResNet-18 0.2 pp), so the caller hands all of them to the
    short tune (see :func:`shortlist`), which ranked these profiles as the final fine-tune did.
    """
    seeds: list[list[int]] = []
    for number, alpha in enumerate(alphas, 1):
        # Each profile is a bisection over about 20 ratios: minutes of silence in a log without a line.
        console.print(f"seeds: the widest ratio within {budget_ms:.4f} ms, width profile {number}/{len(alphas)} (alpha {alpha:g})")
        found = _widest_scaled(problem, budget_ms, alpha)
        if found is None:  # the unpruned model already meets the budget
            return [problem.space.full_indices()]
        seeds += [s for s in found if s not in seeds]
    return seeds


def _widest_scaled(problem: PruningProblem, budget_ms: float, alpha: float) -> list[list[int]] | None:
    """The widest ratio's indices meeting the budget and the next narrower one's, or None when
    even full width meets it.

    Latency grows with the ratio, so the crossing is bracketed and narrowed: each probe is where
    the two bracketing latencies, interpolated in ratio² (a convolution's work grows with the
    product of its input and output widths), reach the budget, and a bisection whenever a probe
    left more than half of the bracket. The bracket starts at the smallest network (evaluated
    already) and the profile's full ratio. Every probe is measured, so the answer is what a plain
    bisection's is: a ratio measured within the budget whose next ratio measured over it. Where
    the interpolation is close it takes 2 probes after the full ratio's instead of about 4 (each
    an engine build on a TensorRT target)."""
    space = problem.space
    ratios = [round(0.05 * k, 2) for k in range(1, math.ceil(space.full_ratio(alpha) / 0.05 - 1e-9) + 1)]
    ms = {-1: problem.evaluate_widths(space.widths_from_indices(space.min_indices())).latency.median_ms}

    def meets(i: int) -> bool:
        ms[i] = problem.evaluate_widths(space.widths_from_indices(space.scaled_indices(ratios[i], alpha))).latency.median_ms
        return ms[i] <= budget_ms

    if meets(len(ratios) - 1):
        return None
    lo, hi = -1, len(ratios) - 1  # invariant: ratios[hi] misses the budget, ratios[lo] (if any) meets it
    halved = True
    while hi - lo > 1:
        probe = _interpolated(ratios, lo, hi, ms, budget_ms) if halved else (lo + hi) // 2
        width = hi - lo
        lo, hi = (probe, hi) if meets(probe) else (lo, probe)
        halved = hi - lo <= width // 2
    return [space.scaled_indices(ratios[i], alpha) for i in (lo, lo - 1) if i >= 0]


def _interpolated(ratios: list[float], lo: int, hi: int, ms: dict[int, float], budget_ms: float) -> int:
    """The index strictly between ``lo`` and ``hi`` nearest below where the latencies measured at
    both ends, linear in ratio² (index -1: ratio 0), reach the budget."""
    x = lambda i: 0.0 if i < 0 else ratios[i] ** 2  # noqa: E731
    share = (budget_ms - ms[lo]) / (ms[hi] - ms[lo]) if ms[hi] > ms[lo] else 0.5
    target = x(lo) + min(max(share, 0.0), 1.0) * (x(hi) - x(lo))
    below = [i for i in range(lo + 1, hi) if x(i) <= target]
    return below[-1] if below else lo + 1


def _wider(group: Group, kept: tuple[int, ...]) -> tuple[int, ...] | None:
    """``kept`` grown to the group's next width on the grid by its most important unkept
    channels; None at full width. For the width encoding this is ``group.kept(next width)``."""
    wider = [w for w in group.options if w > len(kept)]
    if not wider:
        return None
    have = set(kept)
    extra = [i for i in group.order if i not in have][: wider[0] - len(kept)]
    return tuple(sorted((*kept, *extra)))


@dataclasses.dataclass(frozen=True)
class WidenBudget:
    """What widening may spend: new latency measurements (the cache's answers are free) and wall
    seconds. :func:`select` gives it what the search before it spent: on a held-out RegNet-style
    model a 15-minute search was followed by more than 20 minutes of widening, one measurement per
    group per pass, and on a TensorRT device each is an engine build."""

    measurements: float = math.inf
    seconds: float = math.inf

    @classmethod
    def of_search(cls, candidates: list[Candidate], wall_s: float, groups: int) -> "WidenBudget":
        """As many new measurements as the search made (at least one per group: the ranking pass)
        and as much time as it took (its candidates' own seconds where a resumed search replayed
        them from the journal in no time)."""
        measured = sum(1 for c in candidates if not c.predicted and not c.from_cache)
        return cls(max(groups, measured), max(wall_s, sum(c.seconds for c in candidates)))


def widen(
    problem: PruningProblem, picked: Candidate, limit_ms: float, check: Callable[[tuple[int, ...]], bool], passes: int = 3,
    budget: WidenBudget = WidenBudget(),
) -> tuple[Candidate, list[dict]]:
    """The pick grown one grid step at a time while its measured latency stays within
    ``limit_ms``: NetAdapt's step run backwards, to spend the latency the search left.

    The search's focus treats everything under 90 % of the budget alike and its latency axis is
    coarse, so picks often land several percent under the budget: channels the target could
    afford. Each group is first widened alone and measured, which ranks the groups by MACs gained
    per millisecond (HALP's latency-aware ranking, with MACs standing in for importance, since
    adaptive-BN accuracy cannot tell such small changes apart). Then, in that order, each group's
    next step is kept if the widened network still measures within ``limit_ms`` (and the
    problem's memory limit), for up to ``passes`` passes.

    Keeping whichever step happens to measure low favours lucky measurements: on a shared CPU a
    pick widened by 11 steps "cost" 0.3 % and then re-measured about 4 % slower. So ``limit_ms`` sits
    below the search's own limit, and the widened widths must pass ``check`` (:func:`confirm`
    in fresh sessions); when they do not, a bisection over the accepted steps finds the most
    that does (the pick itself already passed). Growing stops where ``budget`` is spent. Returns
    the (possibly unchanged) candidate, with adaptive-BN accuracy, and the accepted steps.

    While the problem's screen is trusted, its surrogate ranks the groups instead of a
    measurement each (a step's latency is the measured one it grows from, scaled by the
    predicted ratio: neighbouring networks share most of the surrogate's error), and a step
    predicted over ``limit_ms`` is not measured. Every step kept is still measured and checked.
    """
    grow = _Growth(problem, budget)
    base_ms = picked.latency.median_ms
    floor = 0.01 * base_ms  # a step that measures as free still costs something: rank, don't divide by noise
    gain = {}
    for g in range(len(problem.space.groups)):
        step = grow.step(picked.choice, g)
        if step is not None and not grow.spent():
            ms = grow.predicted(step, picked.choice, base_ms)
            ms = grow.cost(step) if ms is None else ms
            if ms <= limit_ms and grow.fits_memory(step):
                gain[g] = (grow.macs(step) - picked.macs) / max(ms - base_ms, floor)
    order = sorted(gain, key=lambda g: -gain[g])

    trail, steps, now_ms = [picked.choice], [], base_ms  # every accepted choice, to undo steps from the end
    for _ in range(passes):
        grew = False
        for g in order:
            step = grow.step(trail[-1], g)
            if step is None or grow.spent() or grow.predicted(step, trail[-1], now_ms, default=0.0) > limit_ms:
                continue
            ms = grow.cost(step)
            if ms <= limit_ms and grow.fits_memory(step):
                trail.append(step)
                steps.append({"group": problem.space.groups[g].name, "width": len(step[g]), "latency_ms": ms, "macs": grow.macs(step)})
                grew, now_ms = True, ms
        if not grew:
            break
    if grow.cut:
        console.print(f"  widening stopped at its budget: {grow.measured} new measurements in {grow.elapsed():.0f} s (what the search spent)")
    keep = _most_steps_that_pass(trail, check)
    if keep == 0:
        return picked, []
    return problem.evaluate(trail[keep]), steps[:keep]


class _Growth:
    """One grid step wider in one group, what such a network costs (latency, MACs), and what
    measuring the costs has spent of the budget."""

    def __init__(self, problem: PruningProblem, budget: WidenBudget):
        self.problem, self.space, self.budget = problem, problem.space, budget
        self.measured, self.started, self.cut = 0, time.perf_counter(), False
        self._predictions: dict[Choice, float] = {}  # the screen's latency of each choice asked about
        self._last: tuple = (None, None)  # (choice, its shrunk network): see _shrunk

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        """Whether the budget is spent; asked only where a step could be taken, so ``cut`` says
        that a step was given up for the budget."""
        self.cut = self.cut or self.measured >= self.budget.measurements or self.elapsed() >= self.budget.seconds
        return self.cut

    def step(self, choice: Choice, g: int) -> Choice | None:
        kept = _wider(self.space.groups[g], choice[g])
        return None if kept is None else (*choice[:g], kept, *choice[g + 1:])

    def cost(self, choice: Choice) -> float:
        """The measured latency of ``choice`` (a new measurement unless the cache knows it)."""
        widths = tuple(len(k) for k in choice)
        self.measured += self.problem.latency.peek(widths) is None
        return self.problem.latency_of(widths).median_ms

    def predicted(self, choice: Choice, base: Choice, base_ms: float, default: float | None = None) -> float | None:
        """``base_ms`` (``base``'s measured latency) scaled by the screen's predicted ratio of
        ``choice`` to ``base``; ``default`` while no trusted screen predicts."""
        screen = self.problem.screen
        if screen is None or screen.trusted_error() is None:
            return default
        for c in (base, choice):  # ``choice`` last: its shrunk network is the one kept for macs()
            if c not in self._predictions:
                self._predictions[c] = screen.estimate(self._shrunk(c))
        return default if self._predictions[base] <= 0 else base_ms * self._predictions[choice] / self._predictions[base]

    def macs(self, choice: Choice) -> int:
        return macs_and_params(self._shrunk(choice), self.space.input_shape)[0]

    def _shrunk(self, choice: Choice):
        """The shrunk network of ``choice``, kept for the one most recently asked: the ranking pass
        predicts a step and then counts its MACs, and a shrink costs a deep copy and a graph."""
        if self._last[0] != choice:
            self._last = (choice, self.space.shrink(self.space.plan_of(choice)))
        return self._last[1]

    def fits_memory(self, choice: Choice) -> bool:
        return self.problem.widths_fit_memory(tuple(len(k) for k in choice))


def _most_steps_that_pass(trail: list[Choice], check: Callable[[tuple[int, ...]], bool]) -> int:
    """How many of the accepted widening steps to keep: all when the widest passes ``check``,
    else the most that do, by bisection (``trail[0]``, the pick itself, already passed)."""

    def passes_check(i: int) -> bool:
        return check(tuple(len(k) for k in trail[i]))

    keep = len(trail) - 1
    if keep and not passes_check(keep):
        lo, hi = 0, keep  # trail[lo] passes, trail[hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if passes_check(mid) else (lo, mid)
        console.print(f"  fresh sessions of the widened pick are over the limit; kept {lo} of its {keep} steps")
        keep = lo
    return keep


@dataclasses.dataclass
class Selection:
    """What selection hands the fine-tune: the pick and how it was chosen (report.json rounds[])."""

    picked: Candidate
    confirmation: Confirmation
    short_tune: list[dict]
    widened: list[dict]


def select(
    problem: PruningProblem, candidates: list[Candidate], seeded: list[Candidate], budget_ms: float, policy: BudgetPolicy,
    teacher: nn.Module, *, refine_top: int, refine_epochs: float, widen_passes: int, seed: int, widen_budget: WidenBudget = WidenBudget(),
) -> Selection:
    """Shortlist (fresh re-measure within the search limit) → short tune → confirm in fresh
    sessions against the budget less a noise margin → widen into what the budget leaves."""
    shortlisted = shortlist(problem, candidates, policy.search_limit(budget_ms), refine_top, seeded)
    ranked, rows = refine(refine_epochs, seed, problem, teacher, shortlisted)
    noise = SessionNoise()
    picked, confirmation = confirmed(problem, ranked, budget_ms, policy, noise)
    for row in rows:
        row["picked"] = row["widths"] == list(picked.widths)
    checks = {picked.widths: confirmation}

    def check(widths: tuple[int, ...]) -> bool:
        checks[widths] = confirm(problem, widths, budget_ms, policy, noise)
        return checks[widths].passed

    widened: list[dict] = []
    if widen_passes > 0:
        before = picked.latency.median_ms
        step_limit = min(policy.widen_limit(budget_ms), confirmation.limit_ms)
        picked, widened = widen(problem, picked, step_limit, check, widen_passes, widen_budget)
        if widened:
            console.print(f"widened the pick by {len(widened)} grid step(s): {before:.4f} → {picked.latency.median_ms:.4f} ms (budget {budget_ms:.4f} ms)")
    confirmation = checks[picked.widths]
    console.print(
        f"confirmed in {len(confirmation.sessions_ms)} fresh sessions: median {confirmation.median_ms:.4f} ms "
        f"(session spread {confirmation.spread:.1%}), limit {confirmation.limit_ms:.4f} ms, budget {budget_ms:.4f} ms"
    )
    return Selection(picked, confirmation, rows, widened)
