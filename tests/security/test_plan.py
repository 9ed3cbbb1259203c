"""Exploit 1: a shared plan.json (or report.json) must not run code, read files outside its
folder, or send anything anywhere. Each payload writes a marker file when it runs; the marker's
absence is the proof that nothing ran."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.errors import UserError
from edgeprune.space.pruned import load_pruned, read_plan

TESTS = Path(__file__).resolve().parent.parent


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _folder(tmp_path: Path, model_spec: dict, **report_changes) -> Path:
    """An output folder as someone else could have written it: minimal report, the given plan."""
    out = tmp_path / "shared-out"
    out.mkdir()
    plan = {"format_version": 1, "model": model_spec, "input_shape": [1, 8, 8], "widths": {}, "kept": {}}
    (out / "plan.json").write_text(json.dumps(plan))
    torch.save({}, out / "state_dict.pt")
    report = {
        "data": {"name": "digits", "seed": 0, "sizes": {}}, "preprocess": {"input_shape": [1, 8, 8]},
        "target": "x86-cpu", "input_shape": [1, 8, 8], "pruned": {},
        "artifacts": {"plan": "plan.json", "state_dict": "state_dict.pt", "onnx": "model.onnx"},
        **report_changes,
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def _export(out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeprune", "export", str(out), "--no-progress", "--no-cache", *extra],
        cwd=cwd, env={**os.environ}, capture_output=True, text=True, timeout=120,
    )


def test_a_torchvision_plan_naming_a_pickle_never_unpickles_it(tmp_path):
    marker = tmp_path / "marker"
    torch.save(_Payload(marker), tmp_path / "evil.pt")
    spec = {"kind": "torchvision", "spec": str(tmp_path / "evil.pt"), "num_classes": 10}
    out = _folder(tmp_path, spec)
    run = _export(out, tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "does not start with 'torchvision:'" in run.stderr
    with pytest.raises(UserError):
        load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)  # not even when trusted
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["file", "factory"])
def test_file_and_factory_plans_need_trust_model_code(tmp_path, kind):
    marker = tmp_path / "marker"
    if kind == "file":
        torch.save(_Payload(marker), tmp_path / "evil.pt")
        spec = {"kind": "file", "spec": str(tmp_path / "evil.pt"), "num_classes": None}
    else:  # a module in the working folder that runs its payload on import
        (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\ndef build(**kw):\n    raise SystemExit(0)\n")
        spec = {"kind": "factory", "spec": "evilmod:build", "num_classes": None}
    run = _export(_folder(tmp_path, spec), tmp_path)
    assert run.returncode == 2 and "--trust-model-code" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists()
    # The opt-in does what it says: the user who trusts the plan gets its code run.
    _export(tmp_path / "shared-out", tmp_path, "--trust-model-code")
    assert marker.exists()


def test_sys_exit_as_a_factory_cannot_fake_a_successful_export(tmp_path):
    run = _export(_folder(tmp_path, {"kind": "factory", "spec": "sys:exit", "num_classes": None}), tmp_path)
    assert run.returncode == 2 and "--trust-model-code" in run.stderr


@pytest.mark.parametrize(
    "change, words",
    [
        ({"kept": {"layer1": ["0", 1]}}, "distinct channel indices"),
        ({"kept": {"layer1": [0, 0]}}, "distinct channel indices"),
        ({"kept": [1, 2]}, "'kept' must be an object"),
        ({"input_shape": [1, "8", 8]}, "'input_shape' must be a list"),
        ({"input_shape": [1, 10**6, 8]}, "'input_shape' must be a list"),
        ({"model": {"kind": "torchvision", "spec": 5}}, "'model' must be an object"),
        ({"model": {"kind": "pickle", "spec": "x"}}, "'model.kind' is 'pickle'"),
        ({"model": {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": True}}, "num_classes"),
    ],
)
def test_bad_types_in_plan_json_are_one_line_errors(tmp_path, change, words):
    plan = {"format_version": 1, "model": {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10},
            "input_shape": [3, 32, 32], "kept": {"layer1.0.conv1": [0, 1]}, **change}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match=words):
        read_plan(tmp_path / "plan.json")


def test_hostile_json_in_plan_and_report_is_a_one_line_error(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "digits.json").write_text('{"format_version": ' + "9" * 5000 + "}")
    for name in ("deep.json", "digits.json"):
        with pytest.raises(UserError, match="not valid JSON"):
            read_plan(tmp_path / name)
    out = _folder(tmp_path, {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10})
    (out / "report.json").write_text("[" * 100000 + "]" * 100000)
    run = _export(out, tmp_path)
    assert run.returncode == 2 and "not valid JSON" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/hostname", "sub/../../x", ".hidden/../../x"])
def test_report_artifacts_outside_the_folder_are_refused(tmp_path, name):
    out = _folder(tmp_path, {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10},
                  artifacts={"plan": "plan.json", "state_dict": "state_dict.pt", "model_card": name})
    run = _export(out, tmp_path)
    assert run.returncode == 2 and "not a file name inside the folder" in run.stderr


def test_a_report_artifact_that_links_outside_is_refused(tmp_path):
    out = _folder(tmp_path, {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10},
                  artifacts={"plan": "plan.json", "state_dict": "state_dict.pt", "pareto_plot": "pareto.png"})
    (out / "pareto.png").symlink_to("/etc/hostname")
    run = _export(out, tmp_path)
    assert run.returncode == 2 and "points outside" in run.stderr


def test_report_profile_is_validated_like_an_untrusted_one(tmp_path):
    from edgeprune.profiling.targets import load_profile

    profile = load_profile("x86-cpu").to_dict()
    for bad, words in (({"agent_token_file": "/etc/hostname"}, "not read from a profile"),
                       ({"measure": {**profile["measure"], "max_seconds": 1e9}}, "above its maximum")):
        folder = tmp_path / words.replace(" ", "-")
        folder.mkdir()
        out = _folder(folder, {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10}, profile={**profile, **bad})
        run = _export(out, folder)
        assert run.returncode == 2 and words in run.stderr and "Traceback" not in run.stderr
