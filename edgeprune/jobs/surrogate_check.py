"""How well the latency surrogate predicts a model's pruned variants on one target
(``edgeprune profile MODEL --validate-surrogate``).

It needs a torch model, its channel space and ONNX export, so it lives on the torch side; the
surrogate itself (:mod:`edgeprune.profiling.surrogate`) only sees layer descriptors and timings.
"""

from __future__ import annotations

import numpy as np

from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.space.layers import layer_descriptors
from edgeprune.tasks.models import load_model
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.surrogate import LatencySurrogate, Layer, SurrogateValidation
from edgeprune.progress import progress_bar
from edgeprune.space.channels import ChannelSpace


def validate_surrogate(
    spec: str,
    profile,
    input_shape: tuple[int, int, int],
    num_classes: int | None = None,
    n_fit: int = 40,
    n_validate: int = 60,
    seed: int = 0,
    node_runs: int = 50,
    progress: bool = True,
) -> SurrogateValidation:
    """Fit on ``n_fit`` random pruned variants of ``spec`` (the unpruned model first) and score on
    ``n_validate`` others, all measured as the search measures them: timed in the torch-free
    worker in alternating blocks with the unpruned model, in the unpruned model's units.

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
    backend = IsolatedOrtBackend(profile)
    try:
        reference = export_onnx_bytes(model, shape, profile.opset)
        anchor = backend.measure(reference, shape).median_ms
        backend.set_reference(reference, shape)

        def measure(onnx: bytes) -> float:
            cand, ref = backend.measure_pair(onnx, shape)
            return cand.median_ms / ref.median_ms * anchor

        with progress_bar(progress) as bar:
            task = bar.add_task(f"surrogate check {spec}", total=n_fit + 2 * (len(widths) - n_fit), status="")
            held_out = []  # (layers, onnx, first measurement)
            for i, w in enumerate(widths):
                pruned = space.shrink(space.plan(w))
                onnx = export_onnx_bytes(pruned, shape, profile.opset)
                ms = measure(onnx)
                layers = layer_descriptors(pruned, shape)
                if i < n_fit:
                    surrogate.observe(layers, ms, backend.node_times(onnx, shape, node_runs))
                else:
                    held_out.append((layers, onnx, ms))
                bar.update(task, advance=1, status="fitting" if i < n_fit else "validating")
            second = []
            for _, onnx, _ in held_out:
                second.append(measure(onnx))
                bar.update(task, advance=1, status="re-measuring")
    finally:
        backend.close()
    return _score(surrogate, held_out, second, spec, profile.name, n_fit)


def _score(
    surrogate: LatencySurrogate,
    held_out: list[tuple[list[Layer], bytes, float]],
    second: list[float],
    model: str,
    target: str,
    n_fit: int,
) -> SurrogateValidation:
    """Each held-out candidate's prediction against the mean of its two measurements."""
    surrogate.fit()
    first = [ms for _, _, ms in held_out]
    measured = [(a + b) / 2 for a, b in zip(first, second)]
    predicted = [surrogate.predict(layers) for layers, _, _ in held_out]
    errors = [(p - m) / m * 100.0 for p, m in zip(predicted, measured)]
    return SurrogateValidation(model, target, n_fit, errors, measured, predicted, first, second)
