"""Latency surrogate: layer descriptors, ORT node matching, the table + correction, the CLI check."""

import json
from pathlib import Path

import pytest
from tiny_models import TinyCNN, TinyResNet

from edgeprune.cli import main
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.space.layers import layer_descriptors
from edgeprune.profiling.ort import OrtBackend
from edgeprune.profiling.stats import NodeTime, NodeTimes
from edgeprune.profiling.surrogate import LatencySurrogate, Layer, assign_nodes
from edgeprune.profiling.targets import load_profile

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")


def test_layer_descriptors_follow_execution_with_shapes():
    layers = layer_descriptors(TinyResNet(), (1, 8, 8))
    assert [(l.name, l.kind) for l in layers] == [
        ("stem.0", "conv"), ("stem.1", "bn"), ("block.0", "conv"), ("block.1", "bn"), ("block.3", "conv"),
        ("block.4", "bn"), ("down.0", "conv"), ("down.1", "bn"), ("pool", "pool"), ("head", "linear"),
    ]
    down = layers[6]
    assert (down.cin, down.cout, down.kernel, down.stride, down.groups, down.in_hw, down.out_hw) == (
        32, 64, (3, 3), (2, 2), 1, (8, 8), (4, 4))
    assert (layers[-1].cin, layers[-1].cout) == (64, 10)


def test_real_ort_nodes_are_matched_to_every_layer():
    model = TinyResNet().eval()
    shape = (1, 1, 8, 8)
    times = OrtBackend(load_profile(PROFILE)).node_times(export_onnx_bytes(model, shape, 17), shape, runs=5)
    layers = layer_descriptors(model, shape)
    assigned = assign_nodes(layers, times)
    timed = {i for i, l in enumerate(layers) if l.kind in ("conv", "linear")}
    assert set(assigned) == timed  # every Conv (fused with BN/ReLU/add) and the Gemm found
    # every node is charged to some layer: nothing of the run time is lost
    assert sum(assigned.values()) == pytest.approx(sum(n.mean_ms for n in times.nodes))


# --- the table and the correction, on synthetic but shape-exact ORT traces ----------------------

def _layers(w1: int, w2: int) -> list[Layer]:
    conv = lambda name, cin, cout, groups=1: Layer(name, "conv", cin, cout, (3, 3), (1, 1), groups, (8, 8), (8, 8))  # noqa: E731
    return [conv("a", 3, w1), conv("b", w1, w2), conv("dw", w2, w2, groups=w2),
            Layer("fc", "linear", w2, 10, (1, 1), (1, 1), 1, (1, 1), (1, 1))]


def _true_ms(layer: Layer) -> float:
    """A cost that depends on the position (b also carries a fused add) and on channel counts."""
    extra = 0.004 if layer.name == "b" else 0.0
    return 0.002 + extra + 2e-6 * layer.macs() / 64 + 1e-5 * layer.cout


def _trace(layers: list[Layer], speed: float) -> NodeTimes:
    """What ORT reports for these layers on a CPU running ``speed`` times slower, plus a reorder."""
    nodes = [NodeTime("ReorderInput", "ReorderInput", 0.001 * speed, 0.001 * speed, [[1, 3, 8, 8]], [[1, 3, 8, 8]])]
    for l in layers:
        t = _true_ms(l) * speed
        if l.kind == "conv":
            ins = [[1, l.cin, 8, 8], [l.cout, l.cin // l.groups, 3, 3], [l.cout]]
            nodes.append(NodeTime(f"/{l.name}/Relu_output_0_nchwc", "Conv", t, t, ins, [[1, l.cout, 8, 8]]))
        else:
            nodes.append(NodeTime(f"/{l.name}/Gemm", "Gemm", t, t, [[1, l.cin], [l.cout]], [[1, l.cout]]))
    run = (sum(n.mean_ms for n in nodes) / speed + 0.05) * speed  # executor overhead 0.05 ms
    return NodeTimes(nodes, run, 10)


def _latency(layers) -> float:
    return 0.001 + sum(_true_ms(l) for l in layers) + 0.03  # the unprofiled run's own overhead


def test_surrogate_interpolates_unmeasured_widths_and_ignores_cpu_drift():
    sur = LatencySurrogate((1, 3, 8, 8))
    widths = [(16, 16), (16, 48), (32, 32), (48, 16), (64, 64), (32, 64), (64, 16), (48, 48), (16, 64), (64, 32)]
    for i, (w1, w2) in enumerate(widths):
        layers = _layers(w1, w2)
        # the profiled runs happen at a different CPU speed each time: only shares may be used
        sur.observe(layers, _latency(layers), _trace(layers, speed=1.0 + 0.3 * (i % 3)))
    for w1, w2 in [(32, 48), (48, 64), (16, 32)]:  # never measured
        layers = _layers(w1, w2)
        assert sur.predict(layers) == pytest.approx(_latency(layers), rel=0.03)


def test_surrogate_predicts_from_a_torch_models_descriptors():
    sur = LatencySurrogate((1, 1, 8, 8))
    layers = layer_descriptors(TinyCNN(), sur.input_shape)
    nodes = NodeTimes([NodeTime("/features/features.2/Relu_output_0_nchwc", "Conv", 0.01, 0.01,
                                [[1, 1, 8, 8], [16, 1, 3, 3], [16]], [[1, 16, 8, 8]])], 0.02, 5)
    sur.observe(layers, 0.04, nodes)
    assert sur.predict(layers) == pytest.approx(0.04)
    assert sur.predict(layer_descriptors(TinyCNN(), sur.input_shape)) == pytest.approx(0.04)  # a fresh copy


def test_surrogate_refuses_bad_observations():
    sur = LatencySurrogate((1, 3, 8, 8))
    with pytest.raises(ValueError, match="finite positive"):
        sur.observe(_layers(16, 16), float("nan"))
    sur.observe(_layers(16, 16), 1.0)  # without node times: only the correction learns from it
    with pytest.raises(ValueError, match="no per-layer times"):
        sur.predict(_layers(16, 16))


def test_validate_surrogate_cli_on_a_tiny_model(capsys):
    code = main(["profile", "tiny_models:tiny_resnet", "--validate-surrogate", "--input-shape", "1x8x8",
                 "--num-classes", "10", "--target", PROFILE, "--fit", "4", "--validate", "3", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_fit"], result["n_validate"], len(result["candidates"])) == (4, 3, 3)
    cands = result["candidates"]
    assert all(c["measured_ms"] > 0 and c["predicted_ms"] > 0 for c in cands)
    # Two independent measurements per validation candidate; the score is against their mean.
    assert all(c["measured_ms"] == pytest.approx((c["first_ms"] + c["second_ms"]) / 2) for c in cands)
    # The summary numbers are the ones the candidates' own numbers give.
    errors = [100 * (c["predicted_ms"] - c["measured_ms"]) / c["measured_ms"] for c in cands]
    assert [c["error_pct"] for c in cands] == pytest.approx(errors)
    assert result["within_10pct"] == pytest.approx(sum(abs(e) <= 10 for e in errors) / len(errors))
    assert result["median_abs_error_pct"] == pytest.approx(sorted(abs(e) for e in errors)[1])
    agree = [abs(c["second_ms"] - c["first_ms"]) / c["first_ms"] <= 0.10 for c in cands]
    assert result["remeasure_within_10pct"] == pytest.approx(sum(agree) / len(agree))


def test_validate_surrogate_on_a_target_without_node_times_is_one_line(capsys):
    """The check measures through the search's latency door, so a target whose backend serves no
    per-node times (here the simulated one) is refused before anything is timed."""
    simulated = str(Path(__file__).parents[1] / "profiles" / "simulated.yaml")
    assert main(["profile", "tiny_models:tiny_resnet", "--validate-surrogate", "--input-shape", "1x8x8",
                 "--num-classes", "10", "--target", simulated, "--fit", "2", "--validate", "1"]) == 2
    err = capsys.readouterr().err
    assert "per-node times" in err and "Traceback" not in err


def test_validate_surrogate_needs_an_input_shape(capsys):
    assert main(["profile", "tiny_models:tiny_resnet", "--validate-surrogate", "--target", PROFILE]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_nchwc_padded_channels_still_match_their_layer():
    # mobilenet_v2's 24-channel layers show up as 32 channels in ORT's trace (NCHWc blocks of 16)
    layers = [Layer("a", "conv", 96, 24, (1, 1), (1, 1), 1, (8, 8), (8, 8)),
              Layer("b", "conv", 24, 144, (1, 1), (1, 1), 1, (8, 8), (8, 8))]
    nodes = NodeTimes([
        NodeTime("/a/Conv_output_0_nchwc", "Conv", 0.004, 0.004, [[1, 96, 8, 8], [32, 96, 1, 1], [32]], [[1, 32, 8, 8]]),
        NodeTime("/b/Relu_output_0_nchwc", "Conv", 0.006, 0.006, [[1, 32, 8, 8], [144, 32, 1, 1], [144]], [[1, 144, 8, 8]]),
    ], 0.02, 5)
    assert assign_nodes(layers, nodes) == {0: 0.004, 1: 0.006}
