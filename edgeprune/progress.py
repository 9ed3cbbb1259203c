"""One look for every long-running step: a rich progress bar on a terminal (or in Jupyter), plain
log lines elsewhere, nothing when disabled.

A live bar cannot be drawn into a CI log, a ``| tee`` or a file: rich would print it once, at the
end, and the minutes before would be silent. There the same calls become lines on the
``edgeprune`` logger (:class:`PlainProgress`), which the command line sends to stderr and a
Python caller routes with the logging module.
"""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
log = logging.getLogger("edgeprune")

# How often a plain progress line repeats for a task that is still moving.
PLAIN_EVERY_S = 10.0


def live() -> bool:
    """Whether a live bar can be drawn where the console writes."""
    return console.is_terminal or console.is_jupyter


def progress_bar(enabled: bool = True) -> Progress | PlainProgress:
    if enabled and not live():
        return PlainProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


class PlainProgress:
    """The part of rich's ``Progress`` the steps use (``add_task``, ``update``, ``advance``, a
    context manager), written as a log line per task every :data:`PLAIN_EVERY_S` seconds, when it
    completes, and when the context closes on a task that moved since its last line (a step that
    ends short of its total): ``search: 3/8 (41 s) gen 3/8 · 24 evals``. A task added with
    ``every_step=True`` (a search's generations: few, and each one a result worth reading) also
    gets a line whenever its count moves, however soon after the last one."""

    def __init__(self, every_s: float = PLAIN_EVERY_S):
        self.every_s = every_s
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        return None

    def stop(self) -> None:
        for t in self._tasks.values():
            if t["moved"] and not t["done"]:
                self._log(t, time.monotonic())

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        number = len(self._tasks)
        every_step = bool(fields.pop("every_step", False))
        self._tasks[number] = {"description": description, "total": total, "completed": 0.0, "fields": fields,
                               "started": time.monotonic(), "logged": None, "done": False, "moved": False, "every_step": every_step}
        return number

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None, total: float | None = None,
               description: str | None = None, **fields) -> None:
        t = self._tasks[task]
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        before = t["completed"]
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        t["fields"] |= fields
        t["moved"] = True
        now = time.monotonic()
        finished = t["total"] is not None and t["completed"] >= t["total"]
        stepped = t["every_step"] and t["completed"] != before
        if not t["done"] and (finished or stepped or t["logged"] is None or now - t["logged"] >= self.every_s):
            t["done"] = finished
            self._log(t, now)

    def _log(self, t: dict, now: float) -> None:
        t["logged"], t["moved"] = now, False
        count = f"{t['completed']:g}/{t['total']:g}" if t["total"] is not None else f"{t['completed']:g}"
        extra = " ".join(_field(k, v) for k, v in t["fields"].items() if v not in (None, ""))
        log.info(f"{t['description']}: {count} ({now - t['started']:.0f} s){' ' + extra if extra else ''}")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test's capture included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        return None


def log_to_stderr() -> None:
    """The command line's choice for the ``edgeprune`` logger: its lines on stderr, as they are.
    A Python caller leaves it to the logging module (``logging.basicConfig(level=logging.INFO)``)."""
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr())
        log.setLevel(logging.INFO)
        log.propagate = False


def _field(name: str, value) -> str:
    if isinstance(value, float):
        return f"{name} {value:.3f}"
    return str(value) if name == "status" else f"{name} {value}"
