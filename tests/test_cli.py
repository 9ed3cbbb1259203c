"""The command line as a user runs it: one end-to-end prune, and one-line errors for bad input."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import BINDING_SPEEDUP, binding_prune_command, run_edgeprune
from independent_timing import paired_ratio
from tiny_models import TinyResNet

from edgeprune.cli import main

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
TINY = ["tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300", "--target", PROFILE]
FAST = ["--population", "4", "--generations", "2", "--finetune-epochs", "1", "--no-progress"]


def test_end_to_end_prune_writes_a_deployable_folder(tiny_prune):
    out = tiny_prune.out  # conftest.tiny_prune_command, run once for the session
    assert sorted(p.name for p in out.iterdir()) == [
        ".edgeprune-output", "MODEL_CARD.md", "manifest.json", "model.onnx", "pareto.png", "plan.json", "report.html", "report.json", "state_dict.pt"
    ]
    report = json.loads((out / "report.json").read_text())
    for key in ("target", "fingerprint", "budget_ms", "budget_met", "baseline", "pruned", "pareto", "search", "artifacts", "preprocess"):
        assert key in report
    budget = report["baseline"]["latency_ms"]["median"] / BINDING_SPEEDUP
    assert report["budget_met"] is True and report["budget_kind"] == "speedup" and report["budget_ms"] == pytest.approx(budget)
    assert report["pruned"]["latency_ms"]["median"] <= budget
    assert report["search"]["evaluations"] >= 6 and report["search"]["seed"] == 3
    # every network scored in the run, the baseline's two included, is counted once
    assert report["search"]["evaluations"] == report["rounds"][0]["evaluations"]
    assert report["preprocess"]["input_shape"] == [1, 16, 16]
    assert report["parity"]["top1_agreement"] == 1.0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["widths"] == report["pruned"]["group_widths"]
    tuned = report["rounds"][0]["short_tune"]  # the pick is the best after the short fine-tune
    seeds = report["rounds"][0]["seeds"]  # the ratio profiles' widest networks within the limit
    # Each seed is short-tuned unless a tuned one is at least as wide in every group, or its fresh
    # re-measure went over the search limit (said on stderr).
    widths = [tuple(r["widths"]) for r in tuned]
    untuned = {tuple(s) for s in seeds if not any(all(a <= b for a, b in zip(s, w)) for w in widths)}
    assert seeds and len(untuned) <= tiny_prune.stderr.count("re-measure of a candidate")
    assert 2 <= len(tuned) <= 3 + len(seeds)
    (picked_row,) = [r for r in tuned if r.get("picked")]
    assert picked_row["holdout_accuracy_short_tune"] == max(r["holdout_accuracy_short_tune"] for r in tuned)
    tuned_pick = picked_row["widths"]
    final, widened = report["rounds"][0]["group_widths_round"], report["rounds"][0]["widened"]
    assert (final == tuned_pick) == (not widened)  # the short-tuned pick, grown only by the listed steps
    assert all(f >= t for f, t in zip(final, tuned_pick)) and all(step["latency_ms"] <= budget for step in widened)
    check = report["rounds"][0]["confirmation"]  # the delivered widths, timed in fresh sessions
    assert check["passed"] and len(check["sessions_ms"]) in (3, 5) and check["median_ms"] <= check["limit_ms"] <= 0.97 * budget
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.zeros((1, 1, 16, 16), np.float32)})[0]
    assert logits.shape == (1, 10)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["target"] == "fast-cpu" and meta["input_shape"] == "1x1x16x16"
    assert "edgeprune" in tiny_prune.stderr and "budget" in tiny_prune.stderr  # the before/after table
    # Per-layer latency before/after: every timed layer of the model, shares of each profile adding up.
    rows = report["per_layer"]
    timed = [n for n, m in TinyResNet().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [r["layer"] for r in rows] == [n for n in timed if n in {r["layer"] for r in rows}] and len(rows) >= len(timed) - 1
    assert sum(r["share_before"] for r in rows) == pytest.approx(1.0)
    assert sum(r["ms_before"] for r in rows) == pytest.approx(report["baseline"]["latency_ms"]["median"])
    assert all(r["out_after"] <= r["out_before"] for r in rows if r["out_after"] is not None)
    assert "Where the time goes" in (out / "MODEL_CARD.md").read_text()


# How far an independent check may land over the limit and still agree with a "met" verdict: the
# gate's default tolerance, about the run-to-run spread of one measurement on a shared CPU.
INDEPENDENT_TOLERANCE = 0.05


def _unpruned_onnx(weights: Path, path: Path) -> Path:
    model = TinyResNet().eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    torch.onnx.export(model, torch.zeros(1, 1, 16, 16), str(path), input_names=["input"], opset_version=17, dynamo=False)
    return path


def test_a_met_budget_holds_in_an_independent_timing(tiny_prune, tmp_path):
    """The delivered file against the unpruned model, in alternating fresh onnxruntime sessions
    of the test's own: at most 1/speedup of its latency, within the gate's tolerance."""
    report = tiny_prune.report
    assert report["budget_met"] is True
    full = {name: m.out_channels for name, m in TinyResNet().named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruned = {name: w for name, w in report["pruned"]["widths"].items() if name in full}
    assert pruned.keys() == full.keys() and all(pruned[n] <= full[n] for n in full)
    assert sum(pruned.values()) < sum(full.values())  # the budget made it cut channels
    ratio = paired_ratio(tiny_prune.out / "model.onnx", _unpruned_onnx(tiny_prune.weights, tmp_path / "full.onnx"))
    assert ratio <= (1 + INDEPENDENT_TOLERANCE) / BINDING_SPEEDUP, f"delivered at {ratio:.3f}x the unpruned latency"


def test_a_speedup_out_of_reach_is_exit_1_with_what_was_reached(tiny_prune, tmp_path):
    """50x is more than the smallest network channel pruning allows: no search, that network
    delivered, ``budget_met`` false, exit 1, and the last line says what was reached."""
    out = tmp_path / "out"
    run = run_edgeprune(binding_prune_command(out, tmp_path / "c.sqlite", tiny_prune.weights, 50))
    assert run.returncode == 1, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["budget_met"] is False and report["pruned"]["latency_ms"]["median"] > report["budget_ms"]
    assert report["search"]["generations"] == 0 and "out of reach" in run.stderr
    reached = report["baseline"]["latency_ms"]["median"] / report["pruned"]["latency_ms"]["median"]
    said = " ".join(run.stderr.split())  # rich wraps lines to the terminal's width
    assert f"budget NOT met: pruned {report['pruned']['latency_ms']['median']:.4f} ms" in said
    assert f"(reached {reached:.2f}x the unpruned model's speed, asked 50.00x)" in said


def _run_bad(args, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([*args, "--out", str(out), "--cache", str(tmp_path / "c.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    errors = [line for line in err.splitlines() if line.startswith("edgeprune: error:")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.pt", "--data", "digits", "--budget-ms", "1"], ["missing.pt", "not found"]),
        ([*TINY[:5], "--target", "no-such-target", "--budget-ms", "1"], ["no-such-target", "x86-cpu"]),
        ([*TINY, "--input-shape", "3x8x8", "--budget-ms", "1"], ["3x8x8", "--input-shape"]),
        ([TINY[0], "--data", "imagefolder:/no/such/dir", "--target", PROFILE, "--budget-ms", "1"], ["/no/such/dir"]),
        ([*TINY], ["--budget-ms", "--speedup"]),
        ([*TINY, "--budget-ms", "1", "--objectives", "latency,macs"], ["--objectives", "must name accuracy"]),
        ([*TINY, "--budget-ms", "1", "--strategy", "coevolution", "--objectives", "accuracy,macs"], ["--objectives", "accuracy,latency,robustness"]),
    ],
    ids=["missing-file", "unknown-target", "bad-input-shape", "missing-data-path", "no-budget",
         "objectives-without-accuracy", "objectives-with-coevolution"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, words, tmp_path, capsys):
    line = _run_bad(args, tmp_path, capsys)
    for word in words:
        assert word in line


def test_a_file_that_is_not_a_model(tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    line = _run_bad([str(bogus), "--data", "digits", "--target", PROFILE, "--budget-ms", "1"], tmp_path, capsys)
    assert "notes.pt" in line


def test_an_unrelated_output_folder_is_never_replaced(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    code = main([*TINY, "--budget-ms", "1", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite")])
    assert code == 2 and "not an edgeprune output" in capsys.readouterr().err
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_targets_lists_the_shipped_profiles(capsys):
    assert main(["targets"]) == 0
    assert "x86-cpu" in capsys.readouterr().out


def test_no_subcommand_means_prune(tmp_path, capsys):
    # the prune parser (not the top-level one) must see these flags: a prune-only error proves it
    line = _run_bad(["--target", "x86-cpu", "missing.pt", "--speedup", "2"], tmp_path, capsys)
    assert "missing.pt" in line


def test_profile_measures_an_onnx_file_and_rejects_a_bad_one(tmp_path, capsys):
    from tiny_models import TinyResNet

    from edgeprune.exporters.onnx_bytes import export_onnx_bytes

    path = tmp_path / "tiny.onnx"
    path.write_bytes(export_onnx_bytes(TinyResNet().eval(), (1, 1, 8, 8), 17))
    assert main(["profile", str(path), "--target", PROFILE, "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [1, 1, 8, 8] and len(result["runs"]) == 2
    assert 0 < result["median_ms"] < 100 and result["runs"][0]["n"] >= 20
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    assert main(["profile", str(bad), "--target", PROFILE]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
