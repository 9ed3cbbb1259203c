"""`edgeprune gate`: exit 0 within budget, 1 over, 2 bad input; JUnit and JSON reports; re-measure near the budget."""

import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tiny_models import TinyCNN, TinyResNet

from edgeprune.cli import main
from edgeprune.exporters.onnx import export_onnx

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small real models as ONNX files, and one shared latency cache for the module."""
    folder = tmp_path_factory.mktemp("gate")
    paths = {}
    for name, net in (("cnn.onnx", TinyCNN()), ("resnet.onnx", TinyResNet())):
        (folder / name).write_bytes(export_onnx(net.eval(), SHAPE, 17))
        paths[name] = folder / name
    return folder, paths, str(folder / "latency.sqlite")


def _gate(args, cache, tmp_path) -> tuple[int, dict]:
    out = tmp_path / "gate.json"
    code = main(["gate", *args, "--cache", cache, "--json", str(out), "--no-progress"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def _measured(models, tmp_path, name) -> float:
    """The model's p90 as the gate sees it (measured once, then answered by the shared cache)."""
    _, paths, cache = models
    code, result = _gate([str(paths[name]), "--target", PROFILE, "--budget-ms", "10000"], cache, tmp_path)
    assert code == 0
    return result["results"][0]["measured_ms"]


def test_single_model_fails_20_percent_over_and_passes_20_percent_under(models, tmp_path):
    _, paths, cache = models
    measured = _measured(models, tmp_path, "cnn.onnx")
    assert 0 < measured < 100
    model = [str(paths["cnn.onnx"]), "--target", PROFILE, "--percentile", "90"]
    code, result = _gate([*model, "--budget-ms", str(0.8 * measured)], cache, tmp_path)
    assert code == 1
    (r,) = result["results"]
    assert r["passed"] is False and r["measured_ms"] == measured and r["source"] == "cache"
    code, result = _gate([*model, "--budget-ms", str(1.2 * measured)], cache, tmp_path)
    assert code == 0 and result["passed"] is True and result["results"][0]["measured_ms"] == measured


def test_budgets_file_writes_junit_naming_each_model(models, tmp_path, capsys):
    folder, _, cache = models
    over, under = _measured(models, tmp_path, "cnn.onnx"), _measured(models, tmp_path, "resnet.onnx")
    # Relative paths resolve from the budgets file's folder, and must stay inside it.
    (folder / "fast-cpu.yaml").write_bytes(Path(PROFILE).read_bytes())
    budgets = folder / "budgets.yaml"
    budgets.write_text(
        f"- model: cnn.onnx\n  target: fast-cpu.yaml\n  percentile: 90\n  budget_ms: {0.8 * over}\n  tolerance: 0.05\n"
        f"- model: resnet.onnx\n  target: fast-cpu.yaml\n  percentile: 90\n  budget_ms: {1.2 * under}\n  tolerance: 0.05\n"
    )
    junit = tmp_path / "reports" / "gate.xml"
    t0 = time.perf_counter()
    code, result = _gate(["--budgets", str(budgets), "--junit", str(junit)], cache, tmp_path)
    wall = time.perf_counter() - t0
    assert code == 1
    assert [r["passed"] for r in result["results"]] == [False, True]
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["cnn.onnx", "resnet.onnx"]
    # CI dashboards chart the time of each case: each is a part of the gate's own run
    times = [float(c.get("time")) for c in cases]
    assert all(0 <= t for t in times) and sum(times) <= wall
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    assert "over budget" in cases[0].find("failure").get("message")
    table = capsys.readouterr().out
    assert "FAIL" in table and "PASS" in table and "cnn.onnx" in table


def test_result_inside_the_tolerance_band_is_measured_again(models, tmp_path):
    _, paths, cache = models
    measured = _measured(models, tmp_path, "resnet.onnx")
    code, result = _gate(
        [str(paths["resnet.onnx"]), "--target", PROFILE, "--budget-ms", str(measured), "--tolerance", "0.5"], cache, tmp_path
    )
    (r,) = result["results"]
    assert r["remeasured"] is True and len(r["measurements_ms"]) == 3 and r["measurements_ms"][0] == measured
    assert code == (0 if r["passed"] else 1) and r["passed"] == (r["measured_ms"] <= measured)


def test_no_cache_measures_again(models, tmp_path):
    _, paths, cache = models
    _measured(models, tmp_path, "cnn.onnx")
    code, result = _gate([str(paths["cnn.onnx"]), "--target", PROFILE, "--budget-ms", "10000", "--no-cache"], cache, tmp_path)
    assert code == 0 and result["results"][0]["source"] == "measured"


def test_dynamic_batch_model_is_timed_at_the_targets_batch(tmp_path):
    path = tmp_path / "dyn.onnx"
    path.write_bytes(export_onnx(TinyCNN().eval(), SHAPE, 17, dynamic_batch=True))
    code, result = _gate([str(path), "--target", PROFILE, "--budget-ms", "10000"], str(tmp_path / "c.sqlite"), tmp_path)
    assert code == 0 and result["results"][0]["input_shape"] == list(SHAPE)


BAD_BUDGETS = [
    ("- model: cnn.onnx\n  budget_ms: [1\n", 3, "not valid YAML"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n- model: cnn.onnx\n  budget: 2.0\n", 4, "unknown key 'budget'"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  percentile: 95\n", 3, "percentile"),
    ("- model: cnn.onnx\n  budget_ms: -1\n", 2, "budget_ms"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  tolerance: 5\n", 3, "tolerance"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n\n- model: missing.onnx\n  budget_ms: 1.0\n", 4, "not found"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n- target: x86-cpu\n  model: cnn.onnx\n", 3, "lacks 'budget_ms'"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  target: no-such-target\n", 3, "unknown target"),
    ("model: cnn.onnx\nbudget_ms: 1.0\n", 1, "list"),
    ("- budget_ms: 1.0\n  model: !!python/name:os.system ''\n", 2, "cannot be read"),
]


@pytest.mark.parametrize("text, line, words", BAD_BUDGETS, ids=[
    "yaml-syntax", "unknown-key", "bad-percentile", "negative-budget", "bad-tolerance", "missing-model",
    "missing-budget", "unknown-target", "not-a-list", "unsafe-tag"])
def test_bad_budgets_file_is_exit_2_naming_the_line(models, tmp_path, capsys, text, line, words):
    folder, _, cache = models
    budgets = folder / f"bad-{line}.yaml"
    budgets.write_text(text)
    junit = tmp_path / "gate.xml"
    code = main(["gate", "--budgets", str(budgets), "--junit", str(junit), "--cache", cache, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not junit.exists()
    assert err.count("\n") == 0 and err.startswith("edgeprune: error:") and "Traceback" not in err
    assert f"{budgets} line {line}:" in err and words in err


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "nothing to gate"),
        (["m.onnx", "--budget-ms", "1", "--budgets", "b.yaml"], "not both"),
        (["missing.onnx", "--budget-ms", "1"], "not found"),
        (["missing.onnx", "--budget-ms", "1", "--percentile", "75"], "percentile"),
    ],
)
def test_bad_command_line_is_exit_2(args, words, capsys):
    assert main(["gate", *args, "--no-progress"]) == 2
    assert words in capsys.readouterr().err


# --- the verdict's statistics, on a scripted machine --------------------------------------------


class _Scripted:
    """A backend stand-in that answers each fresh measurement with the next of ``stats`` (and
    fails the test when asked for more than were scripted): the gate's arithmetic is judged on
    numbers the test chose, not on what a shared CPU happened to measure."""

    supports_node_times = False

    def __init__(self, stats):
        self.stats = list(stats)
        self.calls = 0

    def fingerprint(self):
        return {"scripted": True}

    def measure(self, onnx_bytes, input_shape):
        assert self.calls < len(self.stats), f"measured {self.calls + 1} times, {len(self.stats)} scripted"
        self.calls += 1
        return self.stats[self.calls - 1]

    def close(self):
        pass


def _stats(p50: float, p90: float, p99: float):
    from edgeprune.profiling.stats import LatencyStats

    # mean_ms is none of the percentiles: a gate judging it is told apart too.
    return LatencyStats(n=100, median_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=(p50 + p90 + p99) / 3, std_ms=0.1, cv=0.01)


@pytest.fixture
def scripted(monkeypatch):
    """``scripted(stats...)``: the gate's Profiler measures on a :class:`_Scripted` machine (the
    seam the reference tests use: the profiler module's ``make_backend``)."""
    from edgeprune.profiling import profiler as profiler_module

    machine = {}

    def install(*stats):
        def make_backend(profile, **options):
            machine["backend"] = _Scripted(stats)
            return machine["backend"]

        monkeypatch.setattr(profiler_module, "make_backend", make_backend)
        return machine

    return install


def _scripted_gate(models, tmp_path, budget_ms, *extra) -> tuple[int, dict]:
    _, paths, _ = models
    out = tmp_path / "gate.json"
    args = [str(paths["cnn.onnx"]), "--target", PROFILE, "--budget-ms", str(budget_ms), *extra]
    code = main(["gate", *args, "--no-cache", "--json", str(out), "--no-progress"])
    return code, json.loads(out.read_text())["results"][0]


# Budget 10 ms, ±5 %: a first p90 of 10.4 ms is inside the band. Each case: the three p90s
# measured, the exit code the median of the three gives, and what the first alone and the mean
# of the three would have said instead (each the other way).
MEDIAN_OF_THREE = [
    ((10.4, 9.9, 9.8), 0),  # first FAIL, median 9.9 PASS, mean 10.03 FAIL
    ((9.5, 10.1, 10.3), 1),  # first PASS, median 10.1 FAIL, mean 9.97 PASS
]


@pytest.mark.parametrize("p90s, code", MEDIAN_OF_THREE, ids=["first-over-median-under", "first-under-median-over"])
def test_a_result_inside_the_band_is_judged_on_the_median_of_three_measurements(models, tmp_path, scripted, p90s, code):
    machine = scripted(*(_stats(p / 2, p, 2 * p) for p in p90s))
    assert (p90s[0] > 10) != (code == 1) and (sum(p90s) / 3 > 10) != (code == 1)  # the case tells the statistics apart
    got, r = _scripted_gate(models, tmp_path, 10.0, "--tolerance", "0.05")
    assert got == code and r["passed"] is (code == 0)
    assert machine["backend"].calls == 3 and r["remeasured"] is True
    assert r["measurements_ms"] == list(p90s) and r["measured_ms"] == sorted(p90s)[1]


@pytest.mark.parametrize("p90, code", [(10.6, 1), (9.4, 0)], ids=["just-over-the-band", "just-under-the-band"])
def test_a_result_outside_the_band_is_judged_at_once(models, tmp_path, scripted, p90, code):
    # Scripted so that a re-measurement would flip the verdict: it must not be taken.
    machine = scripted(_stats(p90 / 2, p90, 2 * p90), _stats(5, 20 - p90, 30), _stats(5, 20 - p90, 30))
    got, r = _scripted_gate(models, tmp_path, 10.0, "--tolerance", "0.05")
    assert got == code and machine["backend"].calls == 1
    assert r["remeasured"] is False and r["measurements_ms"] == [p90] and r["measured_ms"] == p90


# One measurement: median 4, p90 8, p99 16 ms. Each percentile is judged against a budget 20 %
# above and 20 % below its own value (clear of the ±5 % band, so nothing is re-measured): a gate
# that always judged the median would pass p90 and p99 below budget, one that always judged the
# p90 default would fail p50 above and pass p99 below.
STATS = {50: 4.0, 90: 8.0, 99: 16.0}


@pytest.mark.parametrize("percentile", [50, 90, 99])
@pytest.mark.parametrize("factor, code", [(1.2, 0), (0.8, 1)], ids=["budget-above", "budget-below"])
def test_the_percentile_asked_for_is_the_one_judged(models, tmp_path, scripted, percentile, factor, code):
    scripted(_stats(*STATS.values()))
    got, r = _scripted_gate(models, tmp_path, factor * STATS[percentile], "--percentile", str(percentile))
    assert got == code and r["percentile"] == percentile and r["measured_ms"] == STATS[percentile]


def test_a_budgets_file_judges_each_entry_at_its_own_percentile(models, tmp_path, scripted):
    folder, _, _ = models
    # The same measurement for both entries (the second is answered from the profiler's memory).
    scripted(_stats(*STATS.values()))
    budgets = tmp_path / "budgets.yaml"
    shutil.copy(folder / "cnn.onnx", tmp_path / "cnn.onnx")
    shutil.copy(PROFILE, tmp_path / "fast-cpu.yaml")
    budgets.write_text(
        "- model: cnn.onnx\n  target: fast-cpu.yaml\n  budget_ms: 6\n  percentile: 50\n"
        "- model: cnn.onnx\n  target: fast-cpu.yaml\n  budget_ms: 6\n"  # the default: p90
    )
    out = tmp_path / "gate.json"
    assert main(["gate", "--budgets", str(budgets), "--no-cache", "--json", str(out), "--no-progress"]) == 1
    results = json.loads(out.read_text())["results"]
    assert [(r["percentile"], r["measured_ms"], r["passed"]) for r in results] == [(50, 4.0, True), (90, 8.0, False)]


# A judged statistic equal to the budget is within it (the verdict is "at most the budget"); one
# a millionth of a millisecond above is over. Both are inside the band, so all three measurements
# are scripted to the same value: the median is that value whatever the band does.
@pytest.mark.parametrize("p90, code", [(10.0, 0), (10.000001, 1)], ids=["at-the-budget", "just-over-the-budget"])
def test_a_result_equal_to_the_budget_is_within_it(models, tmp_path, scripted, capsys, p90, code):
    machine = scripted(*[_stats(p90 / 2, p90, 2 * p90)] * 3)
    junit = tmp_path / "gate.xml"
    got, r = _scripted_gate(models, tmp_path, 10.0, "--tolerance", "0.05", "--junit", str(junit))
    assert got == code and machine["backend"].calls == 3 and r["measured_ms"] == p90
    # What the reports say about the entry agrees with the exit code.
    assert r["passed"] is (code == 0) and json.loads((tmp_path / "gate.json").read_text())["passed"] is (code == 0)
    failure = ET.parse(junit).getroot().find("testsuite").find("testcase").find("failure")
    assert (failure is None) is (code == 0)
    if code:
        assert failure.get("type") == "LatencyBudgetExceeded"
    assert ("1 of 1 within budget" if code == 0 else "0 of 1 within budget; 1 over budget") in capsys.readouterr().out


def _robust_run_folder(folder: Path, onnx: bytes, robust_accuracy: float) -> Path:
    """``folder`` as a prune run with robustness leaves it, as far as the gate reads it: model.onnx,
    report.json (``pruned.robust_accuracy``, ``artifacts.onnx``) and manifest.json pinning both,
    written by the exporter's own manifest builder and writer."""
    from edgeprune.files import atomic_write_all
    from edgeprune.exporters.manifest import MANIFEST, REPORT, build_manifest
    from edgeprune.exporters.package import FP32_FILE

    folder.mkdir()
    export_keys = ("target", "fingerprint", "fingerprint_hash", "plan_sha256_16", "input", "output", "accuracy_torch_test", "models", "int8_gate")
    report = {
        "model": "tiny-cnn",
        "pruned": {"accuracy": 0.9, "robust_accuracy": robust_accuracy},
        "artifacts": {"onnx": FP32_FILE, "manifest": MANIFEST},
        "export": dict.fromkeys(export_keys),
    }
    pending = {FP32_FILE: onnx, REPORT: (json.dumps(report, indent=2) + "\n").encode()}
    pending[MANIFEST] = (json.dumps(build_manifest(report, folder, pending), indent=2) + "\n").encode()
    atomic_write_all(folder, pending)
    return folder / FP32_FILE


# min_robust_accuracy 0.5: a model at 0.49 fails, one at exactly 0.50 or above passes (the least
# robust accuracy is "at least"). Latency is well within budget (5 ms of 10, outside the band).
@pytest.mark.parametrize("robust, code", [(0.49, 1), (0.50, 0), (0.51, 0)], ids=["below", "equal", "above"])
def test_the_least_robust_accuracy_is_at_least_min_robust_accuracy(models, tmp_path, scripted, capsys, robust, code):
    _, paths, _ = models
    model = _robust_run_folder(tmp_path / "run", paths["cnn.onnx"].read_bytes(), robust)
    shutil.copy(PROFILE, tmp_path / "run" / "fast-cpu.yaml")
    budgets = tmp_path / "run" / "budgets.yaml"
    budgets.write_text(f"- model: {model.name}\n  target: fast-cpu.yaml\n  budget_ms: 10\n  min_robust_accuracy: 0.5\n")
    machine = scripted(_stats(2.5, 5.0, 10.0))
    out, junit = tmp_path / "gate.json", tmp_path / "gate.xml"
    got = main(["gate", "--budgets", str(budgets), "--no-cache", "--json", str(out), "--junit", str(junit), "--no-progress"])
    (r,) = json.loads(out.read_text())["results"]
    assert got == code and machine["backend"].calls == 1 and r["measured_ms"] == 5.0
    assert r["robust_accuracy"] == robust and r["min_robust_accuracy"] == 0.5
    assert r["passed"] is (code == 0) and r["robust_passed"] is (code == 0)
    failure = ET.parse(junit).getroot().find("testsuite").find("testcase").find("failure")
    assert (failure is None) is (code == 0)
    if code:
        assert failure.get("type") == "RobustAccuracyTooLow"
    table = capsys.readouterr().out
    assert "1 of 1 within budget" in table and ("below the least robust accuracy" in table) is (code == 1)
