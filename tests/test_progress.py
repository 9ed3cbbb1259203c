"""Progress where no live bar can be drawn (a CI log, ``| tee``, a notebook's logging): lines on the
``edgeprune`` logger, on stderr from the command line, instead of minutes of silence."""

from __future__ import annotations

import logging

from edgeprune import progress
from edgeprune.progress import PlainProgress, progress_bar


def _records(caplog, monkeypatch):
    """caplog listens on the root logger, which the command line's stderr handler (installed by
    any earlier ``main()`` of the session) stops the edgeprune logger from reaching."""
    monkeypatch.setattr(progress.log, "propagate", True)
    return caplog.at_level(logging.INFO, logger="edgeprune")


def test_off_a_terminal_a_step_is_logged_when_it_starts_every_few_seconds_and_when_it_ends(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 12.5, 13.0, 20.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = PlainProgress(every_s=10.0)
    with _records(caplog, monkeypatch), bar:
        task = bar.add_task("search", total=3, status="")  # t = 0
        bar.update(task, advance=1, status="gen 1/3")  # t = 1: the first line
        bar.update(task, status="gen 1/3 · still")  # t = 2: within 10 s of it, quiet
        bar.update(task, status="gen 1/3 · later")  # t = 12.5: 10 s on, a line
        bar.update(task, advance=2, status="done")  # t = 13: completed, a line
        bar.advance(task)  # t = 20: over its total already, nothing more
    assert [r.getMessage() for r in caplog.records] == [
        "search: 1/3 (1 s) gen 1/3", "search: 1/3 (12 s) gen 1/3 · later", "search: 3/3 (13 s) done",
    ]


def test_a_step_that_ends_short_of_its_total_gets_its_last_line(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with _records(caplog, monkeypatch), PlainProgress(every_s=10.0) as bar:
        task = bar.add_task("search", total=8, status="")  # t = 0
        bar.update(task, advance=1, status="gen 1/8")  # t = 1: the first line
        bar.update(task, completed=8 - 5, status="front unchanged: stopped after gen 3")  # t = 3: quiet
    # t = 4, the context closes: the state the step ended in
    assert [r.getMessage() for r in caplog.records] == ["search: 1/8 (1 s) gen 1/8", "search: 3/8 (4 s) front unchanged: stopped after gen 3"]


def test_a_search_logs_every_generation_however_fast_it_comes(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 2.5, 3.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with _records(caplog, monkeypatch), PlainProgress(every_s=10.0) as bar:
        task = bar.add_task("search", total=8, status="", every_step=True)  # t = 0
        bar.update(task, advance=1, status="gen 1/8 · 8 evals")  # t = 1
        bar.update(task, advance=1, status="gen 2/8 · 16 evals")  # t = 2: a generation, a line
        bar.update(task, status="gen 2/8 · still")  # t = 2.5: no new generation, quiet
    # t = 3, the context closes: the status moved since the last line
    assert [r.getMessage() for r in caplog.records] == [
        "search: 1/8 (1 s) gen 1/8 · 8 evals", "search: 2/8 (2 s) gen 2/8 · 16 evals", "search: 2/8 (3 s) gen 2/8 · still",
    ]


def test_a_search_run_off_a_terminal_writes_a_line_per_generation(caplog, monkeypatch):
    """The search itself asks for it: NSGA-II's generations, each with the bar's numbers."""
    from edgeprune.search import nsga

    monkeypatch.setattr(progress, "live", lambda: False)
    seen = []
    monkeypatch.setattr(nsga, "progress_bar", lambda enabled: _Spy(seen))
    with _records(caplog, monkeypatch):
        nsga.run_nsga2(_TinyProblem(), population=4, generations=3, seed=0)
    assert seen == [{"every_step": True}]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines][:3] == ["search: 1/3", "search: 2/3", "search: 3/3"]
    assert all("evals" in line for line in lines)


class _Spy(PlainProgress):
    """A PlainProgress that notes the options the search adds its task with."""

    def __init__(self, seen):
        super().__init__(every_s=3600.0)
        self.seen = seen

    def add_task(self, description, total=None, **fields):
        self.seen.append({k: v for k, v in fields.items() if k == "every_step"})
        return super().add_task(description, total, **fields)


class _TinyProblem:
    """Two groups of four widths; accuracy grows with width, latency too; nothing is feasible
    below the limit but the smallest."""

    def __init__(self):
        from edgeprune.records import Group, GroupLayout

        self.layout = GroupLayout([Group(f"g{i}", 64, (16, 32, 48, 64), tuple(range(64)), ()) for i in range(2)])
        self.limit_ms, self.reference_ms, self.front_scores, self.n_obj, self.n_constr = 2.0, 4.0, (), 2, 1
        self.results = {}

    def evaluate_batch(self, choices):
        from edgeprune.profiling.stats import LatencyStats
        from edgeprune.records import Candidate

        for choice in choices:
            if choice not in self.results:
                width = sum(len(c) for c in choice) / 128
                stats = LatencyStats(10, 4 * width, 4 * width, 4 * width, 4 * width, 0.0, 0.01)
                self.results[choice] = Candidate(choice, width, stats, 0, 0, False, 0.0, False, {})
        return [self.results[c] for c in choices]

    def evaluated(self):
        return list(self.results.values())

    def objectives(self, cands):
        import numpy as np

        return np.array([[-c.accuracy, c.latency.median_ms] for c in cands])

    def constraints(self, cands):
        import numpy as np

        return np.array([[c.latency.median_ms - self.limit_ms] for c in cands])


def test_the_bar_is_live_on_a_terminal_plain_elsewhere_and_silent_when_disabled(monkeypatch):
    monkeypatch.setattr(progress, "live", lambda: False)
    assert isinstance(progress_bar(True), PlainProgress)
    assert not isinstance(progress_bar(False), PlainProgress) and progress_bar(False).disable
    monkeypatch.setattr(progress, "live", lambda: True)
    assert not isinstance(progress_bar(True), PlainProgress)


def test_the_command_line_prints_the_lines_on_stderr(capsys):
    from edgeprune.cli import main

    main(["targets"])  # installs the stderr handler as every command does
    progress.log.info("search: 1/8 (3 s) gen 1/8")
    assert "search: 1/8 (3 s) gen 1/8" in capsys.readouterr().err
