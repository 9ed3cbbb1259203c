"""The farm of device agents (--agents), the simulated device it is exercised with, and the queue
that hands measurements to free agents and re-queues those of an agent that stops answering.

Agents are real ``edgeprune agent`` processes on loopback (torch blocked, as on a Jetson) timing
the ``simulated`` device, so the HTTP path, the queue and the kill are the real ones; only the
device is a model with a sleep.
"""

import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_agent import AgentProcess
from tiny_models import TinyResNet

from edgeprune.profiling.agent import make_server
from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.farm import FarmBackend, Pool, agent_urls
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.remote import AgentUnavailable
from edgeprune.search.nsga import run_nsga2
from edgeprune.space.channels import ChannelSpace
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.task import Classification, Recipe

FIXTURES = Path(__file__).parent / "fixtures"


def _simulated(tmp_path, device_seconds: float, **changes) -> Path:
    data = yaml.safe_load((FIXTURES / "sim-fast.yaml").read_text())
    data["simulated"]["device_seconds"] = device_seconds
    data.update(changes)
    path = tmp_path / f"sim-{device_seconds}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def agents():
    started = [AgentProcess() for _ in range(4)]
    yield started
    for a in started:
        a.stop()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    return space, load_data("digits", holdout=300, seed=0)


def _search(setup, profile_path, urls, tmp_path, during=None):
    """A small NSGA-II search timed on the farm ``urls``; ``during(profiler)`` runs in a thread
    alongside it. Returns the candidates (in evaluation order), the farm's summary and log."""
    space, data = setup
    profiler = Profiler(load_profile(str(profile_path)), use_cache=False, agents=urls)
    try:
        latency = ProfiledLatency(space, profiler, opset=17)
        full = tuple(g.full for g in space.groups)
        latency.set_reference(full)
        problem = PruningProblem(space, Classification(data, Recipe(0.01, 64, 0.5, 4.0, progress=False)), latency, limit_ms=0.12)
        side = threading.Thread(target=during, args=(profiler,)) if during else None
        if side:
            side.start()
        start = time.perf_counter()
        run_nsga2(problem, population=8, generations=3, seed=1, show_progress=False)
        wall = time.perf_counter() - start
        if side:
            side.join()
        return problem.evaluated(), profiler.backend.summary(), list(profiler.backend.pool.log), wall
    finally:
        profiler.close()


def _rows(candidates):
    return [(c.widths, c.accuracy, c.latency.median_ms) for c in candidates]


# --- the simulated device -------------------------------------------------------------------------


def test_simulated_latency_is_a_fixed_function_of_the_architecture_with_a_channel_staircase(tmp_path):
    backend = make_backend(load_profile(str(_simulated(tmp_path, 0.0))))
    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    def ms(widths, seed=0):
        torch.manual_seed(seed)
        return backend.latency_ms(export_onnx_bytes(space.shrink(space.plan(widths)), (1, 1, 8, 8), 17))
    small, full = (16, 16, 16), tuple(g.full for g in space.groups)
    assert ms(small) == ms(small, seed=5)  # the weights do not matter, the architecture does
    assert ms(small) < ms(full)
    stats = backend.measure(export_onnx_bytes(space.shrink(space.plan(small)), (1, 1, 8, 8), 17), (1, 1, 8, 8))
    assert stats.median_ms == pytest.approx(ms(small)) and not stats.noisy
    from edgeprune.exporters.onnx import export_onnx

    delivered = export_onnx(space.shrink(space.plan(small)), (1, 1, 8, 8), 17)  # slimmed: another graph, the same layers
    assert backend.latency_ms(delivered) == pytest.approx(ms(small))
    # 17 channels cost what 32 do on a 16-wide kernel (the staircase): compare conv MACs directly
    from edgeprune.profiling.simulated import _macs
    import onnx
    from onnx import helper, TensorProto, numpy_helper, shape_inference
    import numpy as np

    def conv(c_out):
        w = numpy_helper.from_array(np.zeros((c_out, 8, 3, 3), np.float32), "w")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        return _macs(shape_inference.infer_shapes(helper.make_model(graph)), 16)
    assert conv(17) == conv(32) > conv(16)


def test_simulated_profile_needs_its_section_and_is_keyed_apart_from_real_devices(tmp_path):
    sim = load_profile(str(_simulated(tmp_path, 0.0)))
    assert make_backend(sim).fingerprint()["runtime"] == "simulated"
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load((FIXTURES / "sim-fast.yaml").read_text())
    del data["simulated"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="'simulated' section goes with backend simulated"):
        load_profile(str(bad))
    data = yaml.safe_load((FIXTURES / "fast-cpu.yaml").read_text()) | {"simulated": {"device_seconds": 1.0}}
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="only with it"):
        load_profile(str(bad))


# --- which agents: --agents -----------------------------------------------------------------------


def test_agents_from_urls_and_from_a_farm_file(tmp_path):
    assert agent_urls("http://127.0.0.1:1,http://127.0.0.1:2/", "x") == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    farm = tmp_path / "farm.yaml"
    farm.write_text(yaml.safe_dump({"agents": ["http://10.0.0.1:8765", {"url": "http://10.0.0.2:8765", "target": "jetson-orin"}, {"url": "http://10.0.0.3:8765", "target": "x86-cpu"}]}))
    assert agent_urls(str(farm), "jetson-orin") == ["http://10.0.0.1:8765", "http://10.0.0.2:8765"]
    assert agent_urls(str(farm), "x86-cpu") == ["http://10.0.0.1:8765", "http://10.0.0.3:8765"]


@pytest.mark.parametrize("text, message", [
    ("http://127.0.0.1:1,http://127.0.0.1:1", "more than once"),
    ("ftp://127.0.0.1:1", "write it as http://HOST:PORT"),
    ("http://evil@127.0.0.1:1", "write it as http://HOST:PORT"),
    (",", "names no agent"),
    ("missing.yaml", "does not exist"),
])
def test_bad_agent_lists_are_refused_with_the_fix(text, message):
    with pytest.raises(UserError, match=message):
        agent_urls(text, "x86-cpu")


def test_a_farm_file_may_not_name_a_token(tmp_path):
    """A shared farm file choosing a token would choose where a credential goes."""
    farm = tmp_path / "farm.yaml"
    farm.write_text(yaml.safe_dump({"agents": [{"url": "http://10.0.0.1:8765", "token_file": "/home/me/.ssh/id_rsa"}]}))
    with pytest.raises(UserError, match="names a token"):
        agent_urls(str(farm), "x86-cpu")
    farm.write_text(yaml.safe_dump({"agents": [{"url": "http://10.0.0.1:8765"}], "token": "x"}))
    with pytest.raises(UserError, match="exactly one key"):
        agent_urls(str(farm), "x86-cpu")


def test_prune_refuses_a_bad_agent_list_with_exit_2(tmp_path):
    """One line and exit 2, before anything is loaded or written."""
    import subprocess
    import sys

    from conftest import tiny_prune_command

    cmd = tiny_prune_command(tmp_path / "out", tmp_path / "c.sqlite", "--agents", "http://127.0.0.1:1,http://127.0.0.1:1")
    proc = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "more than once" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# --- the queue ------------------------------------------------------------------------------------


class _Device:
    """A stand-in agent for the queue alone: answers with its name, or fails as told."""

    def __init__(self, url, fail_after=None, slow=0.05):
        self.url, self.fail_after, self.slow, self.calls = url, fail_after, slow, []

    def run(self, label):
        self.calls.append(label)
        time.sleep(self.slow)
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise AgentUnavailable(f"agent {self.url} gone")
        return self.url


def test_queue_requeues_a_dead_agents_measurement_on_another_and_never_on_the_same_device():
    devices = [_Device("a", fail_after=1), _Device("b"), _Device("c")]
    warnings = []
    pool = Pool({"profile": "x"}, devices, warnings.append)
    futures = {f"m{i}": pool.submit(f"m{i}", lambda d, i=i: d.run(f"m{i}")) for i in range(12)}
    answers = {label: f.result(timeout=10) for label, f in futures.items()}
    pool.close()
    assert "a" not in pool.live and pool.removed[0]["agent"] == "a" and "gone" in warnings[0]
    failed = [e for e in pool.log if not e["ok"]]
    assert len(failed) == 1 and failed[0]["agent"] == "a"
    assert answers[failed[0]["label"]] in ("b", "c")  # re-done on another device
    pairs = [(e["label"], e["agent"]) for e in pool.log]
    assert len(pairs) == len(set(pairs))  # no measurement twice on one device
    assert sorted(e["label"] for e in pool.log if e["ok"]) == sorted(futures)  # each measured once


def test_queue_fails_a_measurement_only_when_every_agent_has_failed_it():
    pool = Pool({"profile": "x"}, [_Device("a", fail_after=0), _Device("b", fail_after=0)])
    with pytest.raises(UserError, match="no agent of the farm is left"):
        pool.submit("m", lambda d: d.run("m")).result(timeout=10)
    with pytest.raises(UserError, match="no agent of the farm is left"):
        pool.submit("n", lambda d: d.run("n")).result(timeout=10)
    pool.close()


def test_a_bad_model_fails_once_without_taking_the_agent_out():
    def bad(device):
        raise ValueError("agent: model is not ONNX")
    pool = Pool({"profile": "x"}, [_Device("a")])
    with pytest.raises(ValueError, match="not ONNX"):
        pool.submit("m", bad).result(timeout=10)
    assert pool.submit("n", lambda d: d.run("n")).result(timeout=10) == "a"
    pool.close()


# --- real agents ----------------------------------------------------------------------------------


def test_agents_of_another_fingerprint_are_left_out(agents, tmp_path):
    """Devices of different fingerprints never share a run: the odd one is named and unused."""
    other = make_server("127.0.0.1", 0, None, 1)
    other.agent.facts = dict(other.agent.facts, cpu="another board")
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        odd = f"http://127.0.0.1:{other.server_address[1]}"
        warnings = []
        backend = FarmBackend(load_profile(str(_simulated(tmp_path, 0.0))), [agents[0].url, odd, agents[1].url, "http://127.0.0.1:1"], warnings.append)
        summary = backend.summary()
        assert [a["url"] for a in summary["agents"]] == [agents[0].url, agents[1].url]
        reasons = {e["agent"]: e["reason"] for e in summary["left_out"]}
        assert "differs" in reasons[odd] and "did not answer" in reasons["http://127.0.0.1:1"] and len(warnings) == 2
        backend.close()
    finally:
        other.shutdown()
        other.server_close()


def test_one_and_four_agents_give_the_same_search(agents, setup, tmp_path):
    profile = _simulated(tmp_path, 0.2)
    one, summary1, _, _ = _search(setup, profile, [agents[0].url], tmp_path)
    four, summary4, log4, _ = _search(setup, profile, [a.url for a in agents], tmp_path)
    assert _rows(one) == _rows(four) and len(one) >= 10
    used = [a["measurements"] for a in summary4["agents"]]
    assert sum(used) == summary1["agents"][0]["measurements"] and min(used) > 0  # every agent took work


def test_killing_one_of_three_agents_mid_search_loses_nothing(setup, tmp_path):
    profile = _simulated(tmp_path, 0.3)
    started = [AgentProcess() for _ in range(3)]
    try:
        reference, *_ = _search(setup, profile, [a.url for a in started[:1]], tmp_path)

        def kill_when_busy(profiler):
            while len(profiler.backend.pool.log) < 4:
                time.sleep(0.02)
            started[1].proc.kill()

        survived, summary, log, _ = _search(setup, profile, [a.url for a in started], tmp_path, during=kill_when_busy)
    finally:
        for a in started:
            a.stop()
    assert _rows(survived) == _rows(reference)  # the search finished, with the same candidates
    killed = started[1].url
    assert [r["agent"] for r in summary["removed"]] == [killed], (log, summary)
    lost = [e["label"] for e in log if e["agent"] == killed and not e["ok"]]
    assert len(lost) == 1
    redone = [e for e in log if e["label"] == lost[0] and e["ok"]]
    assert len(redone) == 1 and redone[0]["agent"] != killed
    pairs = [(e["label"], e["agent"]) for e in log if e["label"] != "a model"]
    assert len(pairs) == len(set(pairs))  # no candidate timed twice on one device


def test_prune_on_a_farm_end_to_end(agents, tmp_path):
    """`edgeprune prune --agents A,B` as a user types it: the report says who measured what."""
    import json
    import os
    import subprocess

    from conftest import tiny_prune_command

    cmd = tiny_prune_command(tmp_path / "out", tmp_path / "c.sqlite", "--agents", f"{agents[0].url},{agents[1].url}")
    cmd[cmd.index("--target") + 1] = str(_simulated(tmp_path, 0.05))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run(cmd, cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    farm = report["search"]["farm"]
    assert [a["url"] for a in farm["agents"]] == [agents[0].url, agents[1].url]
    assert all(a["measurements"] > 0 and a["in_rotation"] for a in farm["agents"]) and not farm["removed"]
    assert report["fingerprint"]["runtime"] == "simulated"
    assert "a farm of 2 agent(s)" in (tmp_path / "out" / "report.html").read_text()


def test_one_architecture_asked_twice_in_a_batch_is_a_cache_hit_the_second_time_as_here(tmp_path):
    """Farm and local runs count alike: the second ask of a measurement under way is a hit."""
    from concurrent.futures import Future

    from edgeprune.profiling.backend import AsyncBackend
    from edgeprune.profiling.stats import LatencyStats

    class Farmish(AsyncBackend):
        supports_node_times = False

        def __init__(self):
            self.submitted = 0

        def fingerprint(self):
            return {"profile": "farmish"}

        def submit(self, onnx, shape, paired, label):
            self.submitted += 1
            done = Future()
            done.set_result(LatencyStats(10, 1.0, 1.1, 1.2, 1.0, 0.0, 0.0))
            return done

        measure = set_reference = measure_pair = node_times = summary = None  # not asked for here

        def close(self):
            pass

    profiler = Profiler(load_profile(str(_simulated(tmp_path, 0.0))), use_cache=False)
    profiler.backend = Farmish()
    first, second = profiler.start("a", (1, 1), lambda: b"x"), profiler.start("a", (1, 1), lambda: b"x")
    assert [profiler.finish(first)[1], profiler.finish(second)[1]] == [False, True]
    assert profiler.backend.submitted == 1 and profiler.measurements == 1 and profiler.cache_hits == 1
    profiler.close()
