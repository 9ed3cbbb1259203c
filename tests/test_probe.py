"""`edgeprune targets probe`: the channel step measured on the target, not written by hand.

The simulated device's latency model is known (MACs with channel counts rounded up to its
``channel_step``, times a 3 % per-architecture deviation), so the step the probe must find is
known too; a real x86 run shows a staircase and a step without asserting which.
"""

import dataclasses
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from torch_block import BLOCK_TORCH

from edgeprune.cli import main
from edgeprune.commands import targets
from edgeprune.jobs import probe
from edgeprune.jobs.probe_view import print_probe, verdict
from edgeprune.jobs.staircase import Point, choose_step
from edgeprune.profiling import factory
from edgeprune.profiling.agent import make_server
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.simulated import SimulatedBackend
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.targets import load_profile

SHIPPED = Path(__file__).resolve().parent.parent / "profiles" / "simulated.yaml"


def _simulated(tmp_path, **changes) -> str:
    """The shipped simulated device without its 1 s per measurement (``changes``: its model's)."""
    data = yaml.safe_load(SHIPPED.read_text())
    data["simulated"] = {**data["simulated"], "device_seconds": 0.0, **{k: v for k, v in changes.items() if k != "channel_step"}}
    data["channel_step"] = changes.get("channel_step", data["channel_step"])
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _probe_json(tmp_path, capsys, target, *extra) -> tuple[dict, str]:
    out = tmp_path / "probe.json"
    assert main(["targets", "probe", target, "--json", str(out), "--no-progress", *extra]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def _points(ratios: dict[int, float]) -> list[Point]:
    return [Point(w, r, 1.0, r) for w, r in sorted(ratios.items())]


WIDTHS = probe.probe_widths()


def test_the_simulated_device_asks_for_its_own_step_on_every_kind(tmp_path, capsys):
    """The shipped model (step 16, 3 % noise): 56 to 64 channels cost the same (all padded to 64),
    32, 48 and 64 a block more each, so the grid of 8 has a point (56) that buys nothing."""
    result, out = _probe_json(tmp_path, capsys, _simulated(tmp_path))
    assert [k["kind"] for k in result["kinds"]] == ["conv", "depthwise", "linear"]
    assert [k["step"] for k in result["kinds"]] == [16, 16, 16]
    assert result["proposed_channel_step"] == 16 == result["profile_channel_step"]
    for kind in result["kinds"]:
        assert [p["width"] for p in kind["points"]] == WIDTHS == [32, 48, 56, 60, 62, 63, 64, 65]
    assert "proposed channel_step 16: simulated has 16, which agrees" in out
    assert "step per kind: conv 16, depthwise 16, linear 16" in out
    assert "the reference (64 channels) against itself: conv 1.00, depthwise 1.00, linear 1.00; 1 round in" in out and "(noisy:" not in out
    table = out.splitlines()
    assert table[1].split() == ["width", "conv", "ms", "conv", "ratio", "depthwise", "ms", "depthwise", "ratio", "linear", "ms", "linear", "ratio"]
    assert [line.split()[0] for line in table[2:10]] == [str(w) for w in WIDTHS]
    assert [line.split()[2] for line in table[2:10]] == ["0.55*", "0.75*", "1.00", "1.06", "1.00", "1.00", "1.00*", "1.24"]


@pytest.mark.parametrize("step", [8, 32])
def test_a_device_with_another_block_gets_that_step(step, tmp_path, capsys):
    result, out = _probe_json(tmp_path, capsys, _simulated(tmp_path, channel_step=step, noise=0.0), "--kinds", "conv")
    assert result["kinds"][0]["step"] == step == result["proposed_channel_step"]
    assert f"proposed channel_step {step}: simulated has {step}, which agrees" in out


def test_widths_that_all_cost_the_same_have_no_step(tmp_path, capsys):
    result, out = _probe_json(tmp_path, capsys, _simulated(tmp_path, ms_per_mmac=0.0, noise=0.0), "--kinds", "conv")
    assert result["kinds"][0]["step"] is None and result["proposed_channel_step"] is None
    assert "no step" in out and "keeps channel_step 16" in out


def test_smooth_cost_gets_the_finest_grid_whose_every_point_buys_time(tmp_path, capsys):
    """Step 1 without noise: every channel costs its share, so 4 channels at 60 are 6 % of the
    time (over the tolerance) and 2 at 62 are 3 % (under it)."""
    result, _ = _probe_json(tmp_path, capsys, _simulated(tmp_path, channel_step=1, noise=0.0), "--kinds", "conv")
    assert result["kinds"][0]["step"] == 4


def test_choose_step_on_measured_staircases():
    """Ratios to 64 channels measured here. ONNX Runtime (conv): 56 and 60 run no faster than 64,
    62 and 63 slower. LiteRT (conv, median of 3 rounds): cost rises gently between blocks, and
    each multiple of 8 still runs over 5 % faster than the next."""
    ort = {32: 0.52, 48: 0.75, 56: 0.99, 60: 1.00, 62: 1.24, 63: 1.24, 64: 1.00, 65: 1.39}
    assert choose_step(_points(ort)) == 16
    assert choose_step(_points({**ort, 56: 0.9})) == 8  # 56 now buys 10 %: the grid of 8 is worth it
    litert = {32: 0.50, 48: 0.88, 56: 0.94, 60: 0.96, 62: 0.98, 63: 1.01, 64: 1.02, 65: 1.29}
    assert choose_step(_points(litert)) == 8
    assert choose_step(_points({**litert, 62: 0.93})) == 16  # a width above 56 as fast as it: 8 buys nothing there


def _result(profile_step: int, *steps: int | None) -> probe.ProbeResult:
    kinds = tuple(probe.KindStaircase(k, (), s) for k, s in zip(("conv", "depthwise", "linear"), steps))
    return probe.ProbeResult("t", profile_step, {}, kinds, 1.0)


def test_one_step_for_the_profile_fits_every_kind():
    assert _result(16, 16, 8, None).step == 16
    assert _result(16, None, None, None).step is None


@pytest.mark.parametrize(
    "profile_step, steps, says",
    [
        (16, (8, 8), "proposed channel_step 8: t has 16, which differs (coarser"),
        (8, (16, 8), "proposed channel_step 16: t has 8, which differs (finer"),
        (24, (16, 16), "proposed channel_step 16: t has 24, which differs (off the grid"),
    ],
)
def test_the_verdict_says_how_the_profile_differs(profile_step, steps, says):
    lines = verdict(_result(profile_step, *steps))
    assert lines[0].startswith(f"step per kind: conv {steps[0]}, depthwise {steps[1]}")
    assert lines[1].startswith(says)


class _OutlierRound:
    """A device whose second round runs every candidate 9x slower than its reference."""

    supports_node_times = False

    def __init__(self):
        self.calls: list[bytes] = []

    def fingerprint(self):
        return {}

    def set_reference(self, blob, shape):
        self.calls.clear()

    def measure_pair(self, blob, shape):
        self.calls.append(blob)
        ms = 9.0 if len(WIDTHS) < len(self.calls) <= 2 * len(WIDTHS) else 1.0
        return _stats(ms), _stats(1.0)

    def close(self):
        pass


def _stats(ms: float) -> LatencyStats:
    return LatencyStats(100, ms, ms, ms, ms, 0.0, 0.0, False, ms)


def test_rounds_keep_each_widths_median_and_alternate_the_order(tmp_path, monkeypatch):
    device = _OutlierRound()
    monkeypatch.setattr(probe, "make_backend", lambda profile: device)
    result = probe.run_probe(load_profile(_simulated(tmp_path)), ["conv"], rounds=3, progress=False)
    points = result.kinds[0].points
    n = len(WIDTHS)
    assert [p.ratios for p in points] == [(1.0, 9.0, 1.0)] * n and [p.ratio for p in points] == [1.0] * n
    assert device.calls[n:2 * n] == device.calls[:n][::-1] == device.calls[2 * n:][::-1]


def test_a_target_behind_an_agent_is_probed_there(tmp_path, monkeypatch):
    """The probe's bytes go through make_backend: a profile with ``agent:`` is measured by that
    agent (here on loopback), which times the simulated device in its bounded child."""
    made = []

    def spy(profile, **options):
        made.append(factory.make_backend(profile, **options))
        return made[-1]

    monkeypatch.setattr(probe, "make_backend", spy)
    server = make_server("127.0.0.1", 0, None, 1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        profile = dataclasses.replace(load_profile(_simulated(tmp_path)), agent=f"http://127.0.0.1:{server.server_address[1]}")
        remote = probe.run_probe(profile, ["conv"], progress=False)
    finally:
        server.shutdown()
        server.server_close()
        server.agent.close()
    local = probe.run_probe(load_profile(_simulated(tmp_path)), ["conv"], progress=False)
    assert [type(b) for b in made] == [RemoteBackend, SimulatedBackend]
    assert [p.ratio for p in remote.kinds[0].points] == pytest.approx([p.ratio for p in local.kinds[0].points], rel=1e-9)
    assert remote.step == 16


def test_a_real_probe_on_x86_prints_a_staircase_and_a_step(tmp_path, capsys):
    """ONNX Runtime in the isolated worker, one kind (the whole probe takes three times as long);
    what the step is belongs to the machine, so it is not asserted."""
    result, out = _probe_json(tmp_path, capsys, "x86-cpu", "--kinds", "conv")
    points = result["kinds"][0]["points"]
    assert [p["width"] for p in points] == WIDTHS
    assert all(p["ms"] > 0 and p["reference_ms"] > 0 and p["ratio"] > 0 for p in points)
    assert result["fingerprint"]["runtime"] == "onnxruntime"
    assert result["kinds"][0]["step"] in (None, 1, 2, 4, 8, 16, 32)
    assert "step per kind: conv " in out and ("x86-cpu has 16" in out or "keeps channel_step 16" in out)
    assert len([line for line in out.splitlines() if line.split() and line.split()[0].isdigit()]) == len(points)


def test_the_kinds_the_command_offers_are_the_kinds_the_job_builds():
    assert targets.KINDS == tuple(probe.KINDS)


@pytest.mark.parametrize(
    "args, words",
    [
        (["targets", "probe", "no-such-target"], ["unknown target 'no-such-target'", "x86-cpu"]),
        (["targets", "probe", "x86-cpu", "--kinds", "conv,attention"], ["--kinds", "conv, depthwise, linear"]),
        (["targets", "probe", "x86-cpu", "--kinds", "conv,conv"], ["--kinds", "at most once"]),
        (["targets", "probe", "x86-cpu", "--json", "/no/such/dir/p.json"], ["--json", "/no/such/dir"]),
        (["targets", "probe", "x86-cpu", "--rounds", "0"], ["--rounds", "from 1 to 20"]),
    ],
    ids=["unknown-target", "unknown-kind", "repeated-kind", "json-folder-missing", "no-rounds"],
)
def test_bad_input_is_one_line_exit_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgeprune: error:")
    for word in words:
        assert word in err


def test_an_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["targets", "probe", "x86-cpu", "--widths", "8,16"])
    assert exit_.value.code == 2 and "unrecognized arguments: --widths" in capsys.readouterr().err


def test_the_table_on_a_terminal_is_rich(tmp_path, capsys):
    result = probe.run_probe(load_profile(_simulated(tmp_path)), ["linear"], progress=False)
    screen = io.StringIO()
    print_probe(result, Console(file=screen, force_terminal=True, width=120))
    drawn = screen.getvalue()
    assert "edgeprune targets probe simulated" in drawn and "linear ratio" in drawn and "\u2502" in drawn  # box lines
    assert all(f" {w} " in drawn for w in WIDTHS)
    assert "proposed channel_step 16" in capsys.readouterr().out


def test_probe_help_and_the_listing_need_no_torch():
    code = BLOCK_TORCH + "from edgeprune.cli import main\nfor argv in (['targets', 'probe', '--help'], ['targets']):\n    try:\n        main(argv)\n    except SystemExit:\n        pass\nassert 'torch' not in sys.modules\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--kinds" in run.stdout and "x86-cpu" in run.stdout


def test_targets_alone_still_lists(capsys):
    assert main(["targets"]) == 0
    assert "x86-cpu" in capsys.readouterr().out
