"""How well the latency surrogate predicts a model's pruned variants on one target
(``edgeprune profile MODEL --validate-surrogate``).

It needs a torch model, its channel space and ONNX export, so it lives on the torch side; the
surrogate itself (:mod:`edgeprune.profiling.surrogate`) only sees layer descriptors and timings.
Every number comes through the search's own latency door
(:class:`edgeprune.problem.latency.ProfiledLatency` over the target's Profiler, without the
cache), so the check measures candidates exactly as a search would.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from edgeprune.errors import UserError
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.surrogate import LatencySurrogate, Layer, SurrogateValidation
from edgeprune.progress import progress_bar
from edgeprune.space.channels import ChannelSpace
from edgeprune.space.layers import layer_descriptors
from edgeprune.tasks.models import load_model


def validate_surrogate(
    spec: str,
    profile,
    input_shape: tuple[int, int, int],
    num_classes: int | None = None,
    n_fit: int = 40,
    n_validate: int = 60,
    seed: int = 0,
    progress: bool = True,
) -> SurrogateValidation:
    """Fit on ``n_fit`` random pruned variants of ``spec`` (the unpruned model first) and score on
    ``n_validate`` others, all measured as the search measures them: by the target's backend in
    alternating blocks with the unpruned model, in the unpruned model's units.

    Validation candidates are measured twice, in two passes (so minutes apart), and scored
    against the mean; the agreement of the two passes is reported as the noise reference."""
    model, model_spec = load_model(spec, num_classes)
    space = ChannelSpace(model, input_shape, profile.channel_step, model_spec=model_spec)
    shape = (profile.batch, *input_shape)
    rng = np.random.default_rng(seed)
    widths = [tuple(g.full for g in space.groups)] + [
        tuple(int(rng.choice(g.options)) for g in space.groups) for _ in range(n_fit + n_validate - 1)
    ]
    surrogate = LatencySurrogate(shape)
    profiler = Profiler(profile, use_cache=False)
    try:
        latency = ProfiledLatency(space, profiler, profile.opset, profile.batch, profile.model_format)
        if not latency.has_node_times:
            raise UserError(f"target '{profile.name}' ({profile.source}) measures without per-node times, which the surrogate learns from; check the surrogate on an onnxruntime target")
        latency.set_reference(widths[0])

        def measure(w: tuple[int, ...], pruned: nn.Module) -> float:
            return latency.measure(w, pruned, fresh=True)[0].median_ms

        with progress_bar(progress) as bar:
            task = bar.add_task(f"surrogate check {spec}", total=n_fit + 2 * (len(widths) - n_fit), status="")
            held_out = []  # (layers, widths, pruned model, first measurement)
            for i, w in enumerate(widths):
                pruned = space.shrink(space.plan(w))
                ms = measure(w, pruned)
                layers = layer_descriptors(pruned, shape)
                if i < n_fit:
                    surrogate.observe(layers, ms, latency.node_times(w, pruned))
                else:
                    held_out.append((layers, w, pruned, ms))
                bar.update(task, advance=1, status="fitting" if i < n_fit else "validating")
            second = []
            for _, w, pruned, _ in held_out:
                second.append(measure(w, pruned))
                bar.update(task, advance=1, status="re-measuring")
    finally:
        profiler.close()
    return _score(surrogate, held_out, second, spec, profile.name, n_fit)


def _score(
    surrogate: LatencySurrogate,
    held_out: list[tuple[list[Layer], tuple[int, ...], nn.Module, float]],
    second: list[float],
    model: str,
    target: str,
    n_fit: int,
) -> SurrogateValidation:
    """Each held-out candidate's prediction against the mean of its two measurements."""
    surrogate.fit()
    first = [ms for *_, ms in held_out]
    measured = [(a + b) / 2 for a, b in zip(first, second)]
    predicted = [surrogate.predict(layers) for layers, *_ in held_out]
    errors = [(p - m) / m * 100.0 for p, m in zip(predicted, measured)]
    return SurrogateValidation(model, target, n_fit, errors, measured, predicted, first, second)
