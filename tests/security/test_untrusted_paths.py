"""Files someone else wrote may name paths and addresses: a budgets file, a checkpoint, a
report. None of them may reach files outside their own folder, write through a link, or route a
token through a proxy, unless the user says so on the command line."""

import dataclasses
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.commands.resume import resume_config
from edgeprune.api.settings import prune_config
from edgeprune.profiling import credentials
from edgeprune.profiling.stats import LatencyStats
from edgeprune.jobs.checkpoint import RunCheckpoint
from edgeprune.profiling.targets import load_profile


def _onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), path)


@pytest.mark.parametrize("entry", ["model: ../private/m.onnx", "model: {abs}", "model: m.onnx\n  target: ../private/p.yaml"])
def test_a_budgets_file_names_only_files_in_its_folder(tmp_path, capsys, entry):
    (tmp_path / "private").mkdir()
    _onnx(tmp_path / "private" / "m.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    _onnx(repo / "m.onnx")
    (repo / "budgets.yaml").write_text("- " + entry.format(abs=tmp_path / "private" / "m.onnx") + "\n  budget_ms: 1.0\n")
    assert main(["gate", "--budgets", str(repo / "budgets.yaml"), "--no-progress", "--no-cache"]) == 2
    assert "outside the budgets file's folder" in capsys.readouterr().err


def _checkpoint(tmp_path: Path, **config) -> Path:
    out = tmp_path / "out"
    settings = prune_config(**{"model": "torchvision:resnet18", "budget_ms": 1.0, "out": "/elsewhere/out", **config}).to_dict()
    anchor = LatencyStats(100, 1.0, 1.1, 1.2, 1.0, 0.01, 0.01).to_dict()
    RunCheckpoint(out).start({"config": settings, "budget_ms": 1.0, "anchor": anchor})
    return out


@pytest.mark.parametrize(
    "config, words",
    [
        ({"model": "mymodels:build"}, "model 'mymodels:build'"),
        ({"target": "/somewhere/evil.yaml"}, "target '/somewhere/evil.yaml'"),
        ({"weights": "/somewhere/w.pt"}, "weights '/somewhere/w.pt'"),
        ({"data": "imagefolder:/home/someone/photos"}, "data 'imagefolder:/home/someone/photos'"),
        ({"cache": "/somewhere/c.sqlite"}, "cache '/somewhere/c.sqlite'"),
        # a Ray cluster's answers are unpickled by the driver; a farm file is read
        ({"workers": "ray:203.0.113.7:6379"}, "workers 'ray:203.0.113.7:6379'"),
        ({"agents": "/somewhere/farm.yaml"}, "agents '/somewhere/farm.yaml'"),
        ({"agents": "http://127.0.0.1:8765,http://203.0.113.9:8765"}, "agents 'http://127.0.0.1:8765,http://203.0.113.9:8765'"),
        # agents on this machine too, and a shipped target that measures through one: a checkpoint
        # never chooses where the model goes (the rule of export and ensemble for a report.json)
        ({"agents": "http://127.0.0.1:8765"}, "agents 'http://127.0.0.1:8765'"),
        ({"target": "jetson-orin"}, "target 'jetson-orin'"),
    ],
)
def test_a_checkpoint_naming_code_or_paths_needs_trust(tmp_path, config, words):
    out = _checkpoint(tmp_path, **config)
    with pytest.raises(UserError, match="--trust-model-code") as err:
        resume_config(str(out))
    assert words in str(err.value)
    assert resume_config(str(out), trust_model_code=True).output.out == str(out)


def test_a_checkpoint_naming_a_local_ray_cluster_needs_no_trust(tmp_path):
    """A Ray cluster this run starts on this machine runs only this process's work."""
    out = _checkpoint(tmp_path, workers="ray")
    assert resume_config(str(out)).scale_out.ray_address == ""  # a cluster started for the run


def test_a_resumed_run_writes_where_resume_says_not_where_the_checkpoint_says(tmp_path):
    out = _checkpoint(tmp_path)
    assert resume_config(str(out)).output.out == str(out)  # not /elsewhere/out


def test_a_checkpoint_holding_a_link_is_refused(tmp_path):
    out = _checkpoint(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    round_folder = tmp_path / "out.checkpoint" / "round-1"
    round_folder.mkdir()
    (round_folder / "evaluations.jsonl").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        resume_config(str(out))
    assert victim.read_text() == "keep me"


def test_export_reads_a_reports_image_folder_only_when_the_user_names_it(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    plan = {"format_version": 1, "model": {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10},
            "input_shape": [3, 32, 32], "kept": {}}
    (out / "plan.json").write_text(json.dumps(plan))
    report = {"data": {"name": "imagefolder", "source": "/home/someone/photos", "seed": 0, "sizes": {"holdout": 10}},
              "preprocess": {"input_shape": [3, 32, 32]}, "target": "x86-cpu", "input_shape": [3, 32, 32], "pruned": {},
              "artifacts": {"plan": "plan.json", "state_dict": "state_dict.pt"}}
    (out / "report.json").write_text(json.dumps(report))
    import torch
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=10).state_dict(), out / "state_dict.pt")
    assert main(["export", str(out), "--no-progress", "--no-cache"]) == 2
    assert "confirm it with --data imagefolder:/home/someone/photos" in capsys.readouterr().err
    assert main(["export", str(out), "--no-progress", "--no-cache", "--data", "digits"]) == 2
    assert "is not the dataset the model was pruned on" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:8765", "http://127.0.0.1:8765#@evil.example", "http://evil.example@127.0.0.1:8765"])
def test_an_agent_url_cannot_hide_its_host(tmp_path, url):
    data = load_profile("x86-cpu").to_dict()
    del data["source"]
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in {**data, "agent": url}.items()) + "\n")
    with pytest.raises(UserError, match="write it as http://HOST:PORT"):
        load_profile(str(path))


def test_the_token_never_goes_through_a_proxy_from_the_environment(tmp_path, monkeypatch):
    seen = []

    class Recorder(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append((self.server.server_address[1], self.path, self.headers.get("Authorization")))
            body = json.dumps({"device": {"cpu": "x"}, "edgeprune": "0", "max_upload_bytes": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    agent, proxy = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    try:
        monkeypatch.setenv("http_proxy", proxy)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv(credentials.URL_ENV, agent)
        monkeypatch.setenv(credentials.TOKEN_ENV, "tok-0123456789abcdef")
        from edgeprune.profiling.remote import RemoteBackend

        RemoteBackend(dataclasses.replace(load_profile("x86-cpu"), agent=agent)).fingerprint()
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    assert seen == [(servers[0].server_address[1], "/fingerprint", "Bearer tok-0123456789abcdef")]


def test_a_plan_cannot_ask_for_a_huge_input(tmp_path):
    from edgeprune.space.pruned import read_plan

    plan = {"format_version": 1, "model": {"kind": "torchvision", "spec": "torchvision:resnet18"},
            "input_shape": [3, 16384, 16384], "kept": {}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match="elements"):
        read_plan(tmp_path / "plan.json")
    assert os.path.exists(tmp_path / "plan.json")
