"""The outside audit's bad inputs (issue 29, finding 9): each one, fed through the CLI, is one line
on stderr naming the problem, exit code 2 and no traceback, or the behaviour a user relies on."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgeprune.cli import main

TESTS = Path(__file__).parents[1]
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
ENV = {**os.environ, "PYTHONPATH": str(TESTS)}


def _one_line(err: str, *words: str) -> None:
    """stderr is exactly one ``edgeprune: error:`` line holding ``words``."""
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


# --- ensemble on a crafted report.json -----------------------------------------------------------


def _set(path: str, value):
    """A change of report.json: ``path`` like ``pareto.0.latency_ms``; ``...`` deletes the key."""

    def change(report: dict, folder: Path) -> None:
        *parents, last = path.split(".")
        node = report
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value

    return change


def _every_point(key: str, value):
    def change(report: dict, folder: Path) -> None:
        for point in report["pareto"]:
            point[key] = value

    return change


def _external_data(report: dict, folder: Path) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)


def _onnx_is_a_folder(report: dict, folder: Path) -> None:
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").mkdir()


# Each: (what the report says, the words of the one-line error). The first group is also refused
# by the JSON Schema every report is written with; NaN, Infinity and 0 are numbers to a schema.
ENSEMBLE_CASES = {
    "off-grid width": (lambda r, f: r["pareto"][-1]["widths"].__setitem__(next(iter(r["pareto"][-1]["widths"])), 17), ["widths.", "is 17, not one of the group's widths"]),
    "zero width": (lambda r, f: r["pareto"][-1]["widths"].__setitem__(next(iter(r["pareto"][-1]["widths"])), 0), ["is 0, not one of the group's widths"]),
    "null artifacts.onnx": (_set("artifacts.onnx", None), ["artifacts.onnx must be the file name"]),
    "missing artifacts.onnx": (_set("artifacts.onnx", ...), ["not a report edgeprune writes", "'onnx' is a required property"]),
    "no search section": (_set("search", ...), ["not a report edgeprune writes", "'search' is a required property"]),
    "no model section": (_set("model", ...), ["not a report edgeprune writes", "'model' is a required property"]),
    "NaN latency in the front": (_set("pareto.0.latency_ms", math.nan), ["pareto[0].latency_ms must be a finite number > 0, got NaN"]),
    "NaN accuracy in the front": (_set("pareto.0.accuracy", math.nan), ["pareto[0].accuracy must be a number from 0 to 1, got NaN"]),
    "infinite latency in the front": (_set("pareto.0.latency_ms", math.inf), ["pareto[0].latency_ms must be a finite number > 0, got Infinity"]),
    "negative front latencies": (_every_point("latency_ms", -1.0), ["not a report edgeprune writes", "less than the minimum of 0"]),
    "zero front latencies": (_every_point("latency_ms", 0.0), ["pareto[0].latency_ms must be a finite number > 0, got 0.0"]),
    "NaN robustness score": (_set("pareto.0.scores", {"robustness": math.nan}), ["pareto[0].scores.robustness must be a finite number"]),
    "model.onnx with external data": (_external_data, ["model.onnx is not a model ensemble times", "external"]),
    "model.onnx a folder": (_onnx_is_a_folder, ["artifacts.onnx names 'model.onnx', which is not the run's model file"]),
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished one-round prune, as small as they come (the tiny residual net on digits, a short
    search, no fine-tune): ``run/`` (copy it to change it) and its latency cache ``c.sqlite``."""
    from conftest import tiny_prune_command

    folder = tmp_path_factory.mktemp("small-run")
    cmd = tiny_prune_command(folder / "run", folder / "c.sqlite", "--generations", "2", "--refine-top", "1", "--finetune-epochs", "0")
    run = subprocess.run(cmd, cwd=TESTS, env=ENV, capture_output=True, text=True, timeout=900)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    assert len(json.loads((folder / "run" / "report.json").read_text())["pareto"]) >= 2
    return folder


def test_the_run_s_own_report_passes_ensemble_s_checks(small_run):
    """The control of the cases below: a report edgeprune wrote is not refused."""
    from edgeprune.jobs.ensemble import _check_report

    run = small_run / "run"
    _check_report(run, json.loads((run / "report.json").read_text()))


@pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
def test_ensemble_refuses_a_crafted_report_in_one_line(small_run, tmp_path, capsys, case):
    change, words = ENSEMBLE_CASES[case]
    folder = tmp_path / "run"
    shutil.copytree(small_run / "run", folder)
    report = json.loads((folder / "report.json").read_text())
    assert len(report["pareto"]) >= 2 and report["search"]["rounds"] == 1
    change(report, folder)
    (folder / "report.json").write_text(json.dumps(report))  # NaN and Infinity as Python's json writes them
    args = ["ensemble", str(folder), "--members", "2", "--finetune-epochs", "0", "--trust-model-code", "--no-progress", "--cache", str(small_run / "c.sqlite")]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, *words)
    assert not (folder / "ensemble").exists()


# --- agent URLs and tokens --------------------------------------------------------------------


def _relu_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), path)
    return path


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]:8765", "http://[::1:8765"])
def test_a_profile_with_a_broken_ipv6_agent_url_is_one_line(tmp_path, capsys, url):
    text = Path(PROFILE).read_text() + f'agent: "{url}"\n'
    (tmp_path / "remote.yaml").write_text(text)
    args = ["gate", str(_relu_onnx(tmp_path / "m.onnx")), "--budget-ms", "1", "--target", str(tmp_path / "remote.yaml"), "--no-progress", "--no-cache"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, f"'agent' is '{url}'; write it as http://HOST:PORT")


def test_agents_yaml_with_a_broken_ipv6_url_is_one_line(tmp_path, capsys, monkeypatch):
    """The user's agents.yaml is read to find the token of a profile's (valid, loopback) agent."""
    monkeypatch.setenv("EDGEPRUNE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "agents.yaml").write_text('agents:\n  - {url: "http://[zz]:8765", token_file: t.token}\n')
    (tmp_path / "remote.yaml").write_text(Path(PROFILE).read_text() + "agent: http://127.0.0.1:9\n")
    args = ["gate", str(_relu_onnx(tmp_path / "m.onnx")), "--budget-ms", "1", "--target", str(tmp_path / "remote.yaml"), "--no-progress", "--no-cache"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "agent entry 1 must have exactly 'url' (http://HOST:PORT)")


def test_prune_with_a_broken_ipv6_agent_in_agents_is_one_line(tmp_path, capsys):
    args = ["tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300", "--target", PROFILE, "--budget-ms", "5",
            "--agents", "http://127.0.0.1:8765,http://[::1", "--no-progress", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "'agent' is 'http://[::1'")
    assert not (tmp_path / "out").exists()


def test_resume_of_a_checkpoint_with_a_broken_ipv6_agent_is_one_line(tmp_path, capsys):
    """The checkpoint's agents are looked at before anything runs (is any off this machine?)."""
    out, _ = _robust_checkpoint(tmp_path)
    run = json.loads((out.with_name("out.checkpoint") / "run.json").read_text())
    run["config"] |= {"model": "torchvision:resnet18", "target": "x86-cpu"}
    run["config"]["scale_out"]["agents"] = "http://[::1"
    (out.with_name("out.checkpoint") / "run.json").write_text(json.dumps(run))
    assert main(["--resume", str(out), "--no-progress"]) == 2
    _one_line(capsys.readouterr().err, "the checkpoint names agents 'http://[::1'")


def test_an_agent_token_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    token = tmp_path / "agent.token"
    token.write_bytes(b"\xff\xfe" + b"a" * 32 + b"\n")
    assert main(["agent", "--token-file", str(token), "--port", "0"]) == 2
    _one_line(capsys.readouterr().err, f"token file {token} is not UTF-8 text")


# --- prune's numbers and task ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--num-classes", "-3"], "--num-classes must be between 1 and 100000"),
        (["--num-classes", "0"], "--num-classes must be between 1 and 100000"),
        (["--population", str(10**9)], "--population must be between 4 and 1000, got 1000000000"),
        (["--generations", str(10**9)], "--generations must be between 1 and 1000, got 1000000000"),
        (["--rounds", str(10**9)], "--rounds must be between 1 and 100, got 1000000000"),
    ],
)
def test_prune_refuses_out_of_range_counts_before_loading_anything(tmp_path, capsys, extra, words):
    args = ["torchvision:resnet18", "--budget-ms", "1", *extra, "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, words)
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_negative_class_count(tmp_path, capsys):
    assert main(["train", "torchvision:resnet18", "--num-classes", "-3", "--data", "digits", "--out", str(tmp_path / "w.pt"), "--no-progress"]) == 2
    _one_line(capsys.readouterr().err, "--num-classes must be between 1 and 100000", "got -3")
    assert not (tmp_path / "w.pt").exists()


def test_a_task_factory_that_exits_is_an_error_not_exit_0(tmp_path, capsys):
    """``sys:exit`` is callable, so it passes for a factory; calling it raised SystemExit, which
    ended the run with exit 0 and no message."""
    args = ["torchvision:resnet18", "--task", "sys:exit", "--target", PROFILE, "--budget-ms", "1", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "task factory sys:exit() failed (SystemExit)")
    assert not (tmp_path / "out").exists()


# --- files of a run that are too big or not what they say ----------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))


def test_an_8_gb_report_json_is_refused_without_being_read(tmp_path):
    """A sparse 8 GiB report.json, under a 1.5 GiB address-space limit: reading it whole before
    cutting at 64 MiB was a MemoryError traceback; at most the cap and one byte are read."""
    folder = tmp_path / "out"
    folder.mkdir()
    subprocess.run(["truncate", "-s", "8G", str(folder / "report.json")], check=True)
    run = subprocess.run([sys.executable, "-m", "edgeprune", "report", str(folder)], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory)
    assert run.returncode == 2, run.stderr[-2000:]
    _one_line(run.stderr, "report.json is larger than 64 MiB")
    assert not (folder / "report.html").exists()


def test_a_huge_checkpoint_run_json_is_refused_by_size(tmp_path, capsys):
    from edgeprune.untrusted import MAX_JSON_BYTES

    folder = tmp_path / "out.checkpoint"
    folder.mkdir()
    with open(folder / "run.json", "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: one byte over the cap
    assert main(["--resume", str(tmp_path / "out"), "--no-progress"]) == 2
    _one_line(capsys.readouterr().err, "run.json: larger than 64 MiB")


def test_report_html_shows_a_bounded_part_of_a_huge_manifest(small_run, tmp_path):
    """A manifest of 50 000 files and a 4 MB string made a 16 MiB page."""
    folder = tmp_path / "out"
    shutil.copytree(small_run / "run", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    files = len(manifest["artifacts"])
    manifest["artifacts"] += [{"file": f"x{i}.bin", "role": "r" * 100, "bytes": 1, "sha256": "a" * 64} for i in range(50_000)]
    manifest["fingerprint_hash"] = "f" * 4_000_000
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert len(page) < 200_000 and "f" * 201 not in page
    assert "The manifest lists 50,%03d files" % files in page and "only the first 64 are shown" in page
    assert page.count("x1.bin") >= 1 and "x64.bin" not in page


# --- a robust run's checkpoint: the shared adversarial set -------------------------------------


def _robust_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    """An interrupted robust run's checkpoint as edgeprune writes it, before round 1's search:
    run.json, and the folder round 1's adversarial.npz goes in. Returns (--out, the set's settings)."""
    from edgeprune.problem.attack import Attack
    from edgeprune.jobs.checkpoint import CHECKPOINT_FORMAT_VERSION
    from edgeprune.api.settings import prune_config

    out = tmp_path / "out"
    cfg = prune_config(model="tiny_models:tiny_resnet", data="digits", holdout=300, target=PROFILE, budget_ms=5.0, population=4, generations=1,
                      objectives="accuracy,latency,robustness", adv_samples=10, adv_subnets=2, robust_test_samples=10, attack_steps=1, out=str(out))
    config = cfg.to_dict()
    anchor = {"n": 20, "median": 0.05, "p90": 0.05, "p99": 0.05, "mean": 0.05, "std": 0.0, "cv": 0.0}
    folder = out.with_name("out.checkpoint")
    (folder / "round-1").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"format_version": CHECKPOINT_FORMAT_VERSION, "config": config, "budget_ms": 5.0, "anchor": anchor}))
    settings = {"attack": asdict(Attack(cfg.robust.attack_eps, cfg.robust.attack_steps, cfg.robust.attack_alpha)), "subnets": 2, "samples": 10, "seed": cfg.seed + 1000}
    return out, settings


def test_resume_with_an_adversarial_set_that_is_a_folder_is_one_line(tmp_path, capsys):
    out, _ = _robust_checkpoint(tmp_path)
    saved = out.with_name("out.checkpoint") / "round-1" / "adversarial.npz"
    saved.mkdir()
    (saved / "keep.txt").write_text("not edgeprune's")
    assert main(["--resume", str(out), "--no-progress", "--trust-model-code"]) == 2
    _one_line(capsys.readouterr().err, "adversarial.npz is not a file")
    assert (saved / "keep.txt").exists() and not out.exists()


def test_resume_with_adversarial_labels_beyond_the_class_count_is_one_line(tmp_path, capsys):
    out, settings = _robust_checkpoint(tmp_path)
    y = np.arange(20, dtype=np.int64) % 10
    y[7] = 10  # digits has classes 0 to 9
    np.savez(out.with_name("out.checkpoint") / "round-1" / "adversarial.npz", x=np.zeros((20, 1, 8, 8), dtype=np.float32), y=y,
             settings=np.frombuffer(json.dumps(settings).encode(), dtype=np.uint8))
    assert main(["--resume", str(out), "--no-progress", "--trust-model-code"]) == 2
    _one_line(capsys.readouterr().err, "holds label 10, but the data has 10 classes")
    assert not out.exists()


# --- Ray ---------------------------------------------------------------------------------------


def test_ray_failing_to_start_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("RAY_TMPDIR", str(blocker))  # Ray cannot make its session folder there
    args = ["tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300", "--target", PROFILE, "--budget-ms", "5",
            "--workers", "ray", "--no-progress", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite")]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, "cannot start or join the Ray cluster at a local cluster", "Not a directory")
    assert not (tmp_path / "out").exists()


def test_workers_ray_starts_its_own_cluster_on_loopback_whatever_ray_address_says(monkeypatch):
    """``--workers ray`` (as typed, or read back from a checkpoint by --resume) is a cluster started
    for the run: $RAY_ADDRESS naming another one is not joined, and what it starts listens on
    127.0.0.1 only (Ray's default is every interface)."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    from edgeprune.problem.workers import RayWorkers

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing there: joining it would fail
    workers = RayWorkers("")
    try:
        me = psutil.Process()
        ours = {p.pid for p in [me, *me.children(recursive=True)]}
        listening = {(c.pid, c.laddr.ip) for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours}
        assert workers.describe()["nodes"] == 1 and len({pid for pid, _ in listening}) >= 2  # the GCS and the raylet at least
        assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in listening), listening
    finally:
        workers.close()
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:1"  # the user's environment is left as it was


@pytest.mark.parametrize(
    "group, field, value, words",
    [
        ("search", "objectives", ["latency", "bogus"], "--objectives 'latency,bogus' must name accuracy or robustness"),
        ("search", "objectives", ["accuracy", "accuracy"], "--objectives 'accuracy,accuracy' must name accuracy or robustness"),
        ("task", "input_shape", [0, -3, 32], "input shape '0x-3x32' is not CxHxW"),
    ],
)
def test_resume_of_typed_settings_a_command_line_would_refuse_is_one_line(tmp_path, capsys, group, field, value, words):
    """run.json's typed form is checked as the text it stands for would be: a value of the right
    type that the command line refuses (an unknown objective, a zero-sized input) is one line
    naming run.json, not a KeyError after the model has loaded."""
    out, _ = _robust_checkpoint(tmp_path)
    run_json = out.with_name("out.checkpoint") / "run.json"
    run = json.loads(run_json.read_text())
    run["config"][group][field] = value
    run_json.write_text(json.dumps(run))
    assert main(["--resume", str(out), "--no-progress", "--trust-model-code"]) == 2
    err = capsys.readouterr().err
    _one_line(err, words)
    assert "run.json" in err and not out.exists()
