"""``edgeprune targets probe TARGET``: measure the target's channel staircase and propose its
``channel_step`` instead of writing it by hand.

For each layer kind a small network is built in torch with its pruned width at every probed
width: ``conv`` (a 3x3 conv from 64 channels to the width and one back, the pair a pruned channel
group sits between in a ResNet), ``depthwise`` (a MobileNetV2 block: 1x1 expansion to the width, a
3x3 depthwise conv at the width, 1x1 projection back) and ``linear`` (a transformer MLP over 1024
tokens: 64 features to the width and back). Each is converted to the bytes the target measures
(:func:`edgeprune.exporters.measured.measured_bytes`) and timed by the target's own backend
(:func:`edgeprune.profiling.factory.make_backend`: here, in the isolated worker, on the device's
agent, or simulated) in alternating blocks with the same kind at 64 channels. A shared machine's
speed drifts 10-40 % between minutes, so only these paired ratios are compared, never absolute
times taken apart. :mod:`edgeprune.jobs.staircase` chooses the step from the ratios.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgeprune.exporters.measured import measured_bytes
from edgeprune.jobs.staircase import TOLERANCE, Point, choose_step
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.stats import LatencyStats, ratio
from edgeprune.profiling.targets import Profile
from edgeprune.progress import progress_bar

TOP = 64  # the reference width: a multiple of every step judged (1 to 32)
# Each pair is timed for this long in all (the profile's own window when shorter), half of
# x86-cpu's window per candidate in a search: the probe looks for 5 % differences between 8
# widths per kind, not a candidate's latency to 2 %, and three kinds take well under a minute.
WINDOW_S = 0.3


def _conv(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(TOP, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, TOP, 3, padding=1))


def _depthwise(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(TOP, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(), nn.Conv2d(width, TOP, 1)
    )


def _linear(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(TOP, width), nn.ReLU(), nn.Linear(width, TOP))


# kind -> (network at a width, its input shape after the batch). Sizes chosen so each runs in
# 0.1-0.5 ms on one x86 thread: long enough for the kernels to dominate the runtime's overhead.
KINDS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "conv": (_conv, (TOP, 16, 16)),
    "depthwise": (_depthwise, (TOP, 32, 32)),
    "linear": (_linear, (1024, TOP)),
}


def probe_widths() -> list[int]:
    """64 and, for every step s from 2 to 32, ``64 - s``: a chain where each step's grid has
    probed neighbours (32-64, 48-64, 56-64, 60-64, 62-64 and the points between); 63 and 65
    for step 1, where ONNX Runtime's odd widths take their slower path."""
    return sorted({TOP - 2**k for k in range(1, TOP.bit_length() - 1)} | {TOP - 1, TOP, TOP + 1})


@dataclass(frozen=True)
class KindStaircase:
    """One layer kind's measured staircase and the step it asks for (None: no step)."""

    kind: str
    points: tuple[Point, ...]
    step: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "points": [dataclasses.asdict(p) for p in self.points]}


@dataclass(frozen=True)
class ProbeResult:
    target: str
    profile_step: int
    fingerprint: dict[str, Any]
    kinds: tuple[KindStaircase, ...]
    seconds: float
    rounds: int = 1

    @property
    def step(self) -> int | None:
        """One step for the profile: the largest kind's. A grid finer than a kind's blocks gives it
        widths that run no faster than the next one up, which is what the step is there to avoid;
        a coarser one only gives up some faster widths. None when no kind has a step."""
        return max((k.step for k in self.kinds if k.step is not None), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "profile_channel_step": self.profile_step,
            "proposed_channel_step": self.step,
            "reference_width": TOP,
            "tolerance": TOLERANCE,
            "rounds": self.rounds,
            "fingerprint": self.fingerprint,
            "kinds": [k.to_dict() for k in self.kinds],
            "seconds": self.seconds,
        }


def run_probe(profile: Profile, kinds: Sequence[str] = tuple(KINDS), rounds: int = 1, progress: bool = True) -> ProbeResult:
    """Time every kind at every probed width next to its 64-channel reference on ``profile``'s
    backend, in ``rounds`` passes (every other one in reverse order, so a trend in the machine's
    speed does not favour one end of the staircase), and choose each kind's step."""
    t0 = time.perf_counter()
    measure = dataclasses.replace(profile.measure, max_seconds=min(profile.measure.max_seconds, WINDOW_S))
    probed = dataclasses.replace(profile, measure=measure)
    widths = probe_widths()
    backend = make_backend(probed)
    try:
        fingerprint = backend.fingerprint()
        with progress_bar(progress) as bar:
            task = bar.add_task(f"probe {profile.name}", total=len(kinds) * len(widths) * rounds, status="")

            def advance(status: str, done: int) -> None:
                bar.update(task, advance=done, status=status)

            staircases = tuple(_staircase(backend, probed, kind, rounds, advance) for kind in kinds)
    finally:
        backend.close()
    return ProbeResult(profile.name, profile.channel_step, fingerprint, staircases, time.perf_counter() - t0, rounds)


def _staircase(backend: Backend, profile: Profile, kind: str, rounds: int, advance: Callable[[str, int], None]) -> KindStaircase:
    build, sample = KINDS[kind]
    shape = (profile.batch, *sample)
    backend.set_reference(_bytes(build(TOP), shape, profile), shape)
    blobs = {width: _bytes(build(width), shape, profile) for width in probe_widths()}
    pairs: dict[int, list[tuple[LatencyStats, LatencyStats]]] = {width: [] for width in blobs}
    for r in range(rounds):
        for width in sorted(blobs, reverse=r % 2 == 1):
            advance(f"{kind} at {width} channels" + (f", round {r + 1} of {rounds}" if rounds > 1 else ""), 0)
            pairs[width].append(_pair(backend, profile, blobs[width], shape))
            advance("", 1)
    points = [_point(width, found) for width, found in pairs.items()]
    return KindStaircase(kind, tuple(points), choose_step(points))


def _pair(backend: Backend, profile: Profile, blob: bytes, shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
    """``blob`` timed next to the reference. A noisy pair is taken again once (if the profile
    re-takes at all) and the less noisy kept: on a loaded machine every pair is noisy and more
    re-takes would triple the probe's time for little; ``--rounds`` is the remedy for noise."""
    best = backend.measure_pair(blob, shape)
    if profile.measure.repeats_if_noisy and _noisy(best):
        best = min(best, backend.measure_pair(blob, shape), key=lambda pair: (_noisy(pair), _cv(pair)))
    return best


def _point(width: int, pairs: list[tuple[LatencyStats, LatencyStats]]) -> Point:
    ratios = tuple(ratio(cand, ref) for cand, ref in pairs)
    return Point(
        width,
        statistics.median(cand.median_ms for cand, _ in pairs),
        statistics.median(ref.median_ms for _, ref in pairs),
        statistics.median(ratios),
        any(_noisy(pair) for pair in pairs),
        ratios,
    )


def _noisy(pair: tuple[LatencyStats, LatencyStats]) -> bool:
    return pair[0].noisy or pair[1].noisy


def _cv(pair: tuple[LatencyStats, LatencyStats]) -> float:
    return max(pair[0].cv, pair[1].cv)


def _bytes(model: nn.Module, shape: tuple[int, ...], profile: Profile) -> bytes:
    return measured_bytes(model.eval(), shape, profile.opset, profile.model_format)
