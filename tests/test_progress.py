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
