"""Audit finding 1: ``yolo:NAME.yaml`` in a plan.json, report.json or checkpoint someone else
wrote must not run code. ultralytics' own lookup (``check_yaml``) searches the current folder first,
also under the "unified" name (``yolov8n.yaml`` is looked up as ``yolov8.yaml``), and its
``parse_model`` runs ``eval()`` on the yaml's ``activation:`` line. Each attack plants such a
``yolov8.yaml`` in the working folder; its activation writes a marker file, whose absence is the
proof that nothing ran."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("ultralytics")

from edgeprune.tasks import yolo  # noqa: E402
from edgeprune.jobs.checkpoint import RunCheckpoint  # noqa: E402
from edgeprune.errors import UserError  # noqa: E402
from edgeprune.tasks.models import builds_without_code, load_model  # noqa: E402
from edgeprune.commands.resume import resume_config  # noqa: E402
from edgeprune.api.settings import prune_config  # noqa: E402
from edgeprune.profiling.stats import LatencyStats  # noqa: E402
from edgeprune.space.pruned import load_pruned, original_model  # noqa: E402

SHIPPED = yolo.packaged_yaml("yolov8n.yaml")


def _plant(folder: Path, name: str = "yolov8.yaml") -> Path:
    """A working yolov8 yaml whose activation line writes ``folder/marker`` when evaluated."""
    config = yaml.safe_load(SHIPPED.read_text())
    marker = folder / "marker"
    config["activation"] = f"open({str(marker)!r}, 'w').write('pwned') and nn.SiLU()"
    (folder / name).write_text(yaml.safe_dump(config))
    return marker


def _yolo_folder(tmp_path: Path, spec: str) -> Path:
    """An output folder someone else wrote whose plan rebuilds ``yolo:...``."""
    out = tmp_path / "shared-out"
    out.mkdir()
    plan = {"format_version": 1, "model": {"kind": "yolo", "spec": spec, "num_classes": 3}, "input_shape": [3, 64, 64], "kept": {}}
    (out / "plan.json").write_text(json.dumps(plan))
    torch.save({}, out / "state_dict.pt")
    report = {
        "data": {"name": "digits", "seed": 0, "sizes": {}}, "preprocess": {"input_shape": [3, 64, 64]},
        "target": "x86-cpu", "input_shape": [3, 64, 64], "pruned": {},
        "artifacts": {"plan": "plan.json", "state_dict": "state_dict.pt", "onnx": "model.onnx"},
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_the_planted_yaml_is_what_ultralytics_own_lookup_would_run(tmp_path, monkeypatch):
    """The attack is real: ultralytics' lookup from this folder evaluates the planted line."""
    from ultralytics.nn.tasks import DetectionModel

    marker = _plant(tmp_path)
    monkeypatch.chdir(tmp_path)
    DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    assert marker.exists()


def test_a_shipped_name_resolves_inside_the_ultralytics_package_only(tmp_path, monkeypatch):
    import ultralytics

    _plant(tmp_path)
    _plant(tmp_path, "yolov8n.yaml")
    _plant(tmp_path, "mine.yaml")
    monkeypatch.chdir(tmp_path)
    package = Path(ultralytics.__file__).resolve().parent
    assert yolo.packaged_yaml("yolov8n.yaml") == package / "cfg" / "models" / "v8" / "yolov8.yaml"
    assert yolo.packaged_yaml("yolov8n.yaml").is_relative_to(package)
    for name in ("mine.yaml", "./yolov8n.yaml", str(tmp_path / "yolov8n.yaml"), "../yolov8n.yaml", "*.yaml", "yolov8n.pt"):
        assert yolo.packaged_yaml(name) is None, name
    assert builds_without_code("yolo:yolov8n.yaml") and builds_without_code("torchvision:resnet18")
    for spec in ("yolo:mine.yaml", "yolo:./yolov8n.yaml", "yolo:yolov8n.pt", "mymodels:build", "model.pt"):
        assert not builds_without_code(spec), spec


def test_load_pruned_builds_the_shipped_yaml_not_the_planted_one(tmp_path, monkeypatch):
    marker = _plant(tmp_path)
    out = _yolo_folder(tmp_path, "yolo:yolov8n.yaml")
    monkeypatch.chdir(tmp_path)
    # The plan's empty 'kept' does not fit the shipped yolov8n at 3x64x64 as an edgeprune state
    # dict would: whatever the outcome, the planted yaml was never evaluated.
    with pytest.raises(UserError):
        load_pruned(out / "plan.json", out / "state_dict.pt")
    assert not marker.exists()
    net = original_model({"kind": "yolo", "spec": "yolo:yolov8n.yaml", "num_classes": 3})
    assert not marker.exists()
    assert net.model.yaml["scale"] == "n" and net.model.yaml.get("activation") is None
    from ultralytics.nn.tasks import DetectionModel

    clean = tmp_path / "clean"
    clean.mkdir()
    monkeypatch.chdir(clean)  # ultralytics' own lookup, from a folder with nothing planted
    reference = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())


def test_a_plan_naming_an_unshipped_bare_yaml_needs_trust_and_a_path(tmp_path, monkeypatch):
    marker = _plant(tmp_path, "mine.yaml")
    monkeypatch.chdir(tmp_path)
    spec = {"kind": "yolo", "spec": "yolo:mine.yaml", "num_classes": 3}
    with pytest.raises(UserError, match="--trust-model-code"):
        original_model(spec)
    # Even trusted, a bare name is never looked up in the working folder: your own yaml is a path.
    with pytest.raises(UserError, match=r"yolo:\./mine\.yaml"):
        original_model(spec, trust_code=True)
    assert not marker.exists()
    # The opt-in does what it says: a trusted path is built, and its code runs.
    original_model({**spec, "spec": "yolo:./mine.yaml"}, trust_code=True)
    assert marker.exists()


def test_the_command_line_yolo_spec_is_the_shipped_yaml_too(tmp_path, monkeypatch):
    marker = _plant(tmp_path)
    monkeypatch.chdir(tmp_path)
    model, spec = load_model("yolo:yolov8n.yaml", num_classes=3)
    assert spec["kind"] == "yolo" and not marker.exists()


def test_export_of_a_shared_yolo_plan_runs_nothing_from_the_working_folder(tmp_path):
    marker = _plant(tmp_path)
    out = _yolo_folder(tmp_path, "yolo:yolov8n.yaml")
    run = subprocess.run(
        [sys.executable, "-m", "edgeprune", "export", str(out), "--no-progress", "--no-cache"],
        cwd=tmp_path, env={**os.environ}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not marker.exists()


def test_resume_of_a_checkpoint_naming_a_yolo_yaml_runs_nothing_from_the_working_folder(tmp_path):
    marker = _plant(tmp_path)
    out = tmp_path / "out"
    settings = prune_config(model="yolo:yolov8n.yaml", data="digits", holdout=300, budget_ms=1.0, out=str(out)).to_dict()
    anchor = LatencyStats(100, 1.0, 1.1, 1.2, 1.0, 0.01, 0.01).to_dict()
    RunCheckpoint(out).start({"config": settings, "budget_ms": 1.0, "anchor": anchor})
    assert resume_config(str(out)).model == "yolo:yolov8n.yaml"  # a shipped yaml needs no trust...
    run = subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(out), "--no-progress"],
        cwd=tmp_path, env={**os.environ}, capture_output=True, text=True, timeout=300,
    )
    # ...and is built from the package: the digits classifier run then stops at the model check.
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not marker.exists()
