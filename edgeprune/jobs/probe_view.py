"""What ``edgeprune targets probe`` prints: the staircase (each width's median and its ratio to the
same layer at 64 channels, per kind) as a rich table on a terminal and as plain columns in a pipe
or a CI log, then the step each kind asks for and whether the profile's ``channel_step`` agrees."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgeprune.jobs.probe import TOP, ProbeResult
from edgeprune.jobs.staircase import TOLERANCE

LEGEND = (
    f"ratio: time / the same layer at {TOP} channels, timed in alternating blocks; "
    "'*' a width on the kind's proposed grid; '!' a noisy pair"
)


def print_probe(result: ProbeResult, console: Console | None = None) -> None:
    """The table on ``console`` (stdout) when it is a terminal, else plain columns; then the verdict."""
    console = console or Console()
    rows = _rows(result)
    header = ["width"] + [f"{k.kind} {col}" for k in result.kinds for col in ("ms", "ratio")]
    title = f"edgeprune targets probe {result.target}"
    if console.is_terminal:
        table = Table(title=title, caption=LEGEND)
        for name in header:
            table.add_column(name, justify="right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(header)]
        print(title)
        for row in (header, *rows):
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        print(LEGEND)
    for line in verdict(result):
        print(line)


def _rows(result: ProbeResult) -> list[list[str]]:
    rows = []
    for i, point in enumerate(result.kinds[0].points):
        row = [str(point.width)]
        for k in result.kinds:
            p = k.points[i]
            mark = ("*" if k.step and p.width % k.step == 0 else " ") + ("!" if p.noisy else " ")
            row += [f"{p.ms:.4f}", f"{p.ratio:.2f}{mark}"]
        rows.append(row)
    return rows


def verdict(result: ProbeResult) -> list[str]:
    """The step per kind, the one step for the profile, and how the profile's compares."""
    per_kind = ", ".join(f"{k.kind} {k.step if k.step is not None else 'none'}" for k in result.kinds)
    lines = [f"step per kind: {per_kind} (the smallest power of two whose every multiple runs over {TOLERANCE:.0%} faster than the next)"]
    have = result.profile_step
    if result.step is None:
        lines.append(f"no step: in no kind did a width run clearly faster than the next grid point up (the widths cost the same, or noise hides the difference); {result.target} keeps channel_step {have}")
    elif have == result.step:
        lines.append(f"proposed channel_step {result.step}: {result.target} has {have}, which agrees")
    elif have % result.step == 0:
        lines.append(f"proposed channel_step {result.step}: {result.target} has {have}, which differs (coarser: the search misses widths that would run faster)")
    elif result.step % have == 0:
        lines.append(f"proposed channel_step {result.step}: {result.target} has {have}, which differs (finer: some of its widths run no faster than the next one up)")
    else:
        lines.append(f"proposed channel_step {result.step}: {result.target} has {have}, which differs (off the grid: some of its widths run no faster than the next one up, and the search misses others that would run faster)")
    lines.append(_noise_line(result))
    return lines


def _noise_line(result: ProbeResult) -> str:
    """How far the reference timed against itself landed from 1 (the noise every ratio carries),
    with a hint when it or a noisy pair says the machine was busy."""
    itself = {k.kind: p.ratio for k in result.kinds for p in k.points if p.width == TOP}
    line = f"the reference ({TOP} channels) against itself: " + ", ".join(f"{kind} {r:.2f}" for kind, r in itself.items())
    line += f"; {result.rounds} round{'s' if result.rounds > 1 else ''} in {result.seconds:.0f} s"
    noisy = any(p.noisy for k in result.kinds for p in k.points)
    if noisy or any(abs(r - 1) > TOLERANCE / 2 for r in itself.values()):
        line += f" (noisy: probe again on a quieter machine, or with --rounds {max(3, result.rounds + 2)})"
    return line
