"""Exploit 3: a shared profile must never choose where the user's agent token is sent.

Each attack points a profile (named by a budgets file, as in a shared repo) at a listener on
loopback that records every Authorization header it receives; the listener's log is the proof.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.errors import UserError
from edgeprune.profiling import credentials
from edgeprune.profiling.credentials import token_for
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.targets import load_profile

TOKEN = "secret-token-0123456789abcdef"


class Listener:
    """An HTTP server on 127.0.0.1 that logs (path, Authorization) and answers ``status``."""

    def __init__(self, status=401, location=None):
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                outer.seen.append((self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps({"error": "no"}).encode()
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def _model(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _shared_repo(tmp_path: Path, agent_url: str, extra: str = "") -> Path:
    """A checkout someone else wrote: a budgets file naming a profile that names an agent."""
    profile = load_profile("x86-cpu").to_dict()
    del profile["source"]
    lines = [f"{k}: {json.dumps(v)}" for k, v in profile.items() if k not in ("agent", "tensorrt")]
    (tmp_path / "evil.yaml").write_text("\n".join(lines) + f"\nagent: {agent_url}\n{extra}")
    _model(tmp_path / "m.onnx")
    (tmp_path / "budgets.yaml").write_text("- model: m.onnx\n  budget_ms: 1.0\n  target: evil.yaml\n")
    return tmp_path / "budgets.yaml"


def _gate(budgets: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeprune", "gate", "--budgets", str(budgets), "--no-cache", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_profile_naming_a_token_file_is_refused_before_anything_is_sent(tmp_path, listener):
    secret = tmp_path / "local-secret.txt"
    secret.write_text("contents-that-must-not-leave-0123456789")
    budgets = _shared_repo(tmp_path, listener.url, f"agent_token_file: {secret}\n")
    run = _gate(budgets, {**os.environ})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "'agent_token_file' is not read from a profile" in run.stderr
    assert listener.seen == []  # refused while loading: the listener never heard from us


def test_the_env_token_is_not_sent_to_an_agent_a_profile_names(tmp_path, listener):
    budgets = _shared_repo(tmp_path, listener.url)
    # The old attack: $EDGEPRUNE_AGENT_TOKEN alone went to whatever agent the profile named.
    for env in ({credentials.TOKEN_ENV: TOKEN}, {credentials.TOKEN_ENV: TOKEN, credentials.URL_ENV: "http://127.0.0.1:1"}):
        listener.seen.clear()
        run = _gate(budgets, {**os.environ, "EDGEPRUNE_CONFIG_DIR": str(tmp_path / "cfg"), **env})
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert listener.seen, "the gate should have called the agent (without a token)"
        assert all(auth is None for _, auth in listener.seen), listener.seen


def test_a_pinned_token_goes_to_its_agent_only(tmp_path, listener, monkeypatch):
    monkeypatch.setenv(credentials.CONFIG_ENV, str(tmp_path))
    monkeypatch.delenv(credentials.TOKEN_ENV, raising=False)
    (tmp_path / "orin.token").write_text(TOKEN + "\n")
    (tmp_path / "agents.yaml").write_text(f"agents:\n  - url: {listener.url}/\n    token_file: {tmp_path / 'orin.token'}\n")
    assert token_for(listener.url) == TOKEN  # the positive control: pinning works
    assert token_for(listener.url.replace("127.0.0.1", "localhost")) is None  # another origin
    assert token_for("http://127.0.0.1:1") is None
    monkeypatch.setenv(credentials.TOKEN_ENV, "env-token-0123456789abcdef")
    monkeypatch.setenv(credentials.URL_ENV, "http://127.0.0.1:1")
    assert token_for("http://127.0.0.1:1") == "env-token-0123456789abcdef"
    assert token_for(listener.url) == TOKEN


def test_a_redirect_never_carries_the_token_elsewhere(tmp_path, monkeypatch):
    elsewhere = Listener(status=200)
    pinned = Listener(status=307, location=elsewhere.url + "/fingerprint")
    try:
        monkeypatch.setenv(credentials.TOKEN_ENV, TOKEN)
        monkeypatch.setenv(credentials.URL_ENV, pinned.url)
        profile = load_profile(_write_profile(tmp_path, pinned.url))
        with pytest.raises(UserError, match="redirect"):
            RemoteBackend(profile).fingerprint()
        assert pinned.seen == [("/fingerprint", f"Bearer {TOKEN}")]
        assert elsewhere.seen == []
    finally:
        pinned.close()
        elsewhere.close()


def test_an_agent_answering_500_is_exit_2_not_over_budget(tmp_path):
    broken = Listener(status=500)
    try:
        run = _gate(_shared_repo(tmp_path, broken.url), {**os.environ})
    finally:
        broken.close()
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "HTTP 500" in run.stderr and run.stderr.count("\n") == 1


def _write_profile(tmp_path: Path, agent_url: str) -> str:
    _shared_repo(tmp_path, agent_url)
    return str(tmp_path / "evil.yaml")


def test_a_malformed_agents_file_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv(credentials.CONFIG_ENV, str(tmp_path))
    (tmp_path / "agents.yaml").write_text("agents:\n  - url: http://127.0.0.1:9\n    token: inline-is-not-allowed\n")
    with pytest.raises(UserError, match="exactly 'url'"):
        token_for("http://127.0.0.1:9")
