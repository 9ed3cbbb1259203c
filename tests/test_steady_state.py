"""The steady-state (asynchronous) NSGA-II, ``--strategy steady-state``: more evaluations in flight
than the population holds, candidates journaled in the order they complete, and a resumed run that
replays that order and asks for the same candidates.

:class:`Devices` is a LatencySource like a farm's: every measurement is a future, and one
completes only when the search waits for one (:class:`Arrivals`): the one ranked first by a fixed
function of the widths among those under way. Nothing depends on time or threads, so two runs
see the same arrival order whatever the machine's load, and that order is not the start order.
The real farm's path (futures answered by agent threads) is the end-to-end test's."""

from collections import deque
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.jobs.checkpoint import SearchJournal
from edgeprune.problem.pruning import PruningProblem
from edgeprune.problem.streaming import CandidateStream
from edgeprune.profiling.stats import LatencyStats
from edgeprune.search.nsga import run_nsga2
from edgeprune.search.steady import run_steady_state
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.data import load_data
from edgeprune.tasks.task import Classification, Recipe

RECIPE = Recipe(lr=0.01, batch_size=64, kd_alpha=0.5, kd_temperature=4.0, progress=False)


def _ms(widths) -> float:
    return 0.01 * sum(widths)


class Devices:
    """``slots`` simulated devices (see the module docstring)."""

    has_node_times = False
    shape = (1, 1, 8, 8)

    def __init__(self, slots: int):
        self.capacity = slots
        self.under_way: dict[int, tuple] = {}
        self.started: list[tuple[int, ...]] = []
        self.most_under_way = 0

    def start(self, widths, model=None, fresh=False):
        future = Future()
        self.started.append(tuple(widths))
        self.under_way[len(self.started)] = (tuple(widths), future)
        self.most_under_way = max(self.most_under_way, len(self.under_way))
        return SimpleNamespace(future=future, widths=tuple(widths))

    def finish(self, pending):
        ms = pending.future.result()
        return LatencyStats(10, ms, ms, ms, ms, 0.0, 0.0), False

    def peek(self, widths):
        return None

    def complete_one(self) -> None:
        assert self.under_way, "the search waits with nothing under way"
        key = min(self.under_way, key=lambda k: (sum(w * (i + 7) for i, w in enumerate(self.under_way[k][0])) % 11, k))
        widths, future = self.under_way.pop(key)
        future.set_result(_ms(widths))  # its done-callback queues its arrival


class Arrivals:
    """The stream's arrival queue: a wait for an arrival lets :class:`Devices` complete one."""

    def __init__(self, devices: Devices):
        self.devices, self.items = devices, deque()

    def put(self, ticket):
        self.items.append(ticket)

    def get(self):
        if not self.items:
            self.devices.complete_one()
        return self.items.popleft()


def _watched(problem: PruningProblem, devices: Devices) -> PruningProblem:
    stream = CandidateStream(problem)
    stream._arrivals = Arrivals(devices)
    problem.stream = lambda: stream
    return problem


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", holdout=300, seed=0)
    return data, ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=8)  # 192 architectures


def _problem(setup, latency, **options) -> PruningProblem:
    data, space = setup
    return PruningProblem(space, Classification(data, RECIPE), latency, limit_ms=0.6, **options)


def _rows(candidates):
    return [(c.widths, c.accuracy, c.latency.median_ms) for c in candidates]


def _run(setup, tmp_path, name, restored=(), slots=6):
    devices = Devices(slots)
    journal = SearchJournal(tmp_path / name, setup[1])
    problem = _watched(_problem(setup, devices, journal=journal, restored=restored), devices)
    result = run_steady_state(problem, population=4, generations=4, seed=2, in_flight=slots, show_progress=False, journal=journal)
    return problem, result, devices, journal


@pytest.fixture(scope="module")
def whole(setup, tmp_path_factory):
    """An uninterrupted search: population 4, 4 generations, 6 in flight."""
    return _run(setup, tmp_path_factory.mktemp("whole"), "round-1")


def test_keeps_more_in_flight_than_the_population_and_journals_in_completion_order(whole):
    problem, result, devices, journal = whole
    assert devices.most_under_way == 6 > 4  # the farm's six, not the population's four
    assert len(result.candidates) == 16 == len(devices.started)  # population x generations, each new
    assert len(set(devices.started)) == 16
    journaled = journal.candidates()
    assert _rows(journaled) == _rows(result.candidates)  # the journal is the told order
    assert [c.widths for c in journaled] != devices.started  # ... which is the arrival order, not the start order
    assert [h["generation"] for h in result.history] == [1, 2, 3, 4]
    assert [h["evaluations"] for h in result.history] == [4, 8, 12, 16]
    assert [h["generation"] for h in journal.generations()] == [1, 2, 3, 4]


@pytest.mark.parametrize("kept", [1, 7, 13])
def test_a_resumed_run_replays_the_arrival_order_and_asks_for_the_same_candidates(setup, tmp_path, whole, kept):
    _, uninterrupted, _, journal = whole
    restored = journal.candidates()[:kept]  # the kill came after `kept` completions
    problem, resumed, devices, _ = _run(setup, tmp_path, "resumed", restored=restored)
    assert _rows(resumed.candidates) == _rows(uninterrupted.candidates)
    assert len(devices.started) == 16 - kept  # nothing journaled is measured again
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in uninterrupted.history]


def test_on_this_host_it_runs_one_at_a_time_and_is_deterministic(setup):
    class Here:
        """A LatencySource that measures at once, as this host's profiler does."""

        has_node_times, shape, capacity = False, (1, 1, 8, 8), 1

        def start(self, widths, model=None, fresh=False):
            return LatencyStats(10, _ms(widths), 0, 0, 0, 0.0, 0.0), False

        def finish(self, answer):
            return answer

        def peek(self, widths):
            return None

    runs = [run_steady_state(_problem(setup, Here()), population=4, generations=2, seed=5, show_progress=False) for _ in range(2)]
    assert _rows(runs[0].candidates) == _rows(runs[1].candidates) and len(runs[0].candidates) == 8
    generational = run_nsga2(_problem(setup, Here()), population=4, generations=1, seed=5, show_progress=False)
    assert _rows(runs[0].candidates)[:4] == _rows(generational.candidates)[:4]  # the same first population


def test_known_candidates_are_told_without_a_measurement_or_a_journal_line(setup, tmp_path, whole):
    space = setup[1]
    full = whole[0].results[space.full_choice()]
    devices = Devices(3)
    journal = SearchJournal(tmp_path / "known", space)
    problem = _watched(_problem(setup, devices, journal=journal, known=[full]), devices)
    run_steady_state(problem, population=4, generations=2, seed=2, in_flight=3, show_progress=False)
    assert tuple(full.widths) not in devices.started
    assert space.full_choice() not in [c.choice for c in journal.candidates()]
    assert len(journal.candidates()) == len(devices.started) == 7  # 8 told, the unpruned one known


def test_the_in_flight_count_is_the_first_runs_and_a_forged_one_is_refused(setup, tmp_path):
    from edgeprune.errors import UserError

    journal = SearchJournal(tmp_path / "round-1", setup[1])
    assert journal.in_flight(16) == 16
    assert SearchJournal(tmp_path / "round-1", setup[1]).in_flight(2) == 16  # a resumed run keeps it
    assert journal.in_flight(1000) == 16
    assert SearchJournal(tmp_path / "other", setup[1]).in_flight(1000) == 256  # capped
    (tmp_path / "round-1" / "stream.json").write_text('{"in_flight": 100000}')
    with pytest.raises(UserError, match="in_flight.*1 to 256"):
        journal.in_flight(4)


def test_prune_with_the_steady_state_strategy_on_two_loopback_agents(tmp_path):
    """`edgeprune prune --agents A,B --strategy steady-state` as a user types it."""
    import json
    import os
    import subprocess

    from conftest import tiny_prune_command
    from test_agent import AgentProcess
    from test_farm import _simulated

    agents = [AgentProcess(), AgentProcess()]
    try:
        cmd = tiny_prune_command(tmp_path / "out", tmp_path / "c.sqlite", "--agents", ",".join(a.url for a in agents), "--strategy", "steady-state")
        cmd[cmd.index("--target") + 1] = str(_simulated(tmp_path, 0.05))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        run = subprocess.run(cmd, cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for a in agents:
            a.stop()
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    search = report["search"]
    assert search["strategy"] == "steady-state"
    generations = [h["generation"] for h in search["history"]]
    assert generations == list(range(1, len(generations) + 1)) and len(generations) >= 2  # the tiny space may run out before 4
    assert all(a["measurements"] > 0 for a in search["farm"]["agents"])
