"""Audit finding 3: a received report.json chose where models go. Its recorded profile may name an
agent (``agent: http://HOST:PORT``), and ``export`` and ``ensemble`` uploaded models there with no
flag. One rule now covers export, ensemble and ``--resume``: a profile, target or agents that a
file someone else wrote names, and that would send a model to an agent, is used only with
``--trust-model-code``, or not at all when the user names the target with ``--target``.

A loopback HTTP server stands in for the attacker's agent and records every request it gets."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision

from edgeprune.jobs.checkpoint import RunCheckpoint
from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.commands.resume import resume_config
from edgeprune.api.settings import prune_config
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.targets import load_profile

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture
def attacker():
    """A loopback 'agent' that answers 500 to everything and keeps what it was sent."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, len(self.rfile.read(length)) if length else 0))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _edgeprune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _agent_profile(url: str) -> dict:
    return {**load_profile(str(TESTS / "fixtures" / "fast-cpu.yaml")).to_dict(), "agent": url}


def _export_folder(tmp_path: Path, url: str) -> Path:
    """A complete output folder of an unpruned torchvision model (rebuilt without trust) whose
    report.json records a profile that measures through ``url``."""
    out = tmp_path / "received"
    out.mkdir()
    torch.manual_seed(0)
    model = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=10).eval()
    torch.save(model.state_dict(), out / "state_dict.pt")
    plan = {"format_version": 1, "model": {"kind": "torchvision", "spec": "torchvision:squeezenet1_1", "num_classes": 10},
            "input_shape": [3, 32, 32], "kept": {}}
    (out / "plan.json").write_text(json.dumps(plan))
    data = load_data("digits", input_shape=(3, 32, 32), holdout=300, seed=0).describe()
    report = {
        "data": {k: data[k] for k in ("name", "seed", "sizes")}, "preprocess": data["preprocess"], "target": "fast-cpu",
        "input_shape": [3, 32, 32], "pruned": {}, "artifacts": {"plan": "plan.json", "state_dict": "state_dict.pt"},
        "profile": _agent_profile(url),
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def test_export_uploads_to_a_reports_agent_only_with_the_flag(tmp_path, attacker):
    url, seen = attacker
    out = _export_folder(tmp_path, url)
    run = _edgeprune("export", str(out), "--no-progress", "--no-cache", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"measures through the agent at {url}" in run.stderr and "--trust-model-code" in run.stderr and "--target" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert seen == []
    # The opt-in does what it says: with the flag the model goes to the report's agent.
    run = _edgeprune("export", str(out), "--no-progress", "--no-cache", "--trust-model-code", cwd=tmp_path)
    assert run.returncode == 2 and seen, run.stderr[-2000:]


def test_a_target_named_on_the_command_line_replaces_the_reports_agent(tmp_path, attacker):
    url, seen = attacker
    out = _export_folder(tmp_path, url)
    # --data names another dataset on purpose: export stops at that check, which comes after the
    # target is settled, so the run shows the report's agent was passed over without timing anything.
    run = _edgeprune("export", str(out), "--no-progress", "--no-cache", "--target", str(TESTS / "fixtures" / "fast-cpu.yaml"),
                     "--data", "fashion-mnist", cwd=tmp_path)
    assert run.returncode == 2 and "is not the dataset the model was pruned on" in run.stderr, run.stderr[-2000:]
    assert "measures through the agent" not in run.stderr and seen == []


def test_ensemble_uploads_to_a_reports_agent_only_with_the_flag(tmp_path, attacker, tiny_prune):
    url, seen = attacker
    out = tmp_path / "received"
    shutil.copytree(tiny_prune.out, out)
    report = json.loads((out / "report.json").read_text())
    report["profile"] = {**report["profile"], "agent": url}
    (out / "report.json").write_text(json.dumps(report))
    run = _edgeprune("ensemble", str(out), "--members", "2", "--no-progress", "--no-cache", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"measures through the agent at {url}" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert seen == []


def _checkpoint(tmp_path: Path, **config) -> Path:
    out = tmp_path / "out"
    settings = prune_config(**{
        "model": "torchvision:squeezenet1_1", "data": "digits", "holdout": 300, "input_shape": "3x32x32",
        "target": "x86-cpu", "budget_ms": 1.0, "out": str(out), **config,
    }).to_dict()
    anchor = LatencyStats(100, 1.0, 1.1, 1.2, 1.0, 0.01, 0.01).to_dict()
    RunCheckpoint(out).start({"config": settings, "budget_ms": 1.0, "anchor": anchor})
    return out


def test_resume_uploads_to_a_checkpoints_agents_only_with_the_flag(tmp_path, attacker):
    url, seen = attacker
    out = _checkpoint(tmp_path, agents=url)
    run = _edgeprune("--resume", str(out), "--no-progress", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert f"agents '{url}'" in run.stderr and "--trust-model-code" in run.stderr
    assert seen == []


def test_a_checkpoint_naming_a_shipped_target_that_measures_on_an_agent_needs_the_flag(tmp_path):
    out = _checkpoint(tmp_path, target="jetson-orin")
    with pytest.raises(UserError, match="target 'jetson-orin'.*uploads the model to an agent"):
        resume_config(str(out))
    assert resume_config(str(out), trust_model_code=True).target == "jetson-orin"
    assert resume_config(str(_checkpoint(tmp_path / "local", target="x86-cpu"))).target == "x86-cpu"


@pytest.mark.parametrize("target", ["/somewhere/evil.yaml", "../profiles/mine.yaml", "sub\\x"])
def test_a_reports_target_that_is_a_file_path_is_not_read(target):
    from edgeprune.jobs.export import recorded_profile

    with pytest.raises(UserError, match="is not a shipped target name; pass --target"):
        recorded_profile({"target": target})
    assert recorded_profile({"target": "x86-cpu"}).name == "x86-cpu"
