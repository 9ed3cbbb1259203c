"""What a run hands over besides the model: report.json, pareto.png and the before/after table.

report.json keys follow DESIGN.md; CI jobs and users parse them, so keys are only ever added.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or edge build hosts
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from edgeprune.search.interface import Candidate  # noqa: E402
from edgeprune.progress import console  # noqa: E402


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def plot_pareto(
    path: Path,
    candidates: list[Candidate],
    pareto: list[Candidate],
    budget_ms: float,
    baseline: Candidate,
    picked: Candidate,
    title: str,
) -> None:
    """Every evaluated candidate, the feasible front, the budget, the baseline and the pick."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(
        [c.latency.median_ms for c in candidates],
        [100 * c.accuracy for c in candidates],
        s=12,
        c="#9aa5b1",
        label=f"evaluated ({len(candidates)})",
    )
    ax.plot(
        [c.latency.median_ms for c in pareto],
        [100 * c.accuracy for c in pareto],
        "o-",
        c="#1f77b4",
        ms=5,
        label="Pareto front (within budget)",
    )
    ax.axvline(budget_ms, ls="--", c="#d62728", label=f"budget {budget_ms:.4g} ms")
    ax.scatter([baseline.latency.median_ms], [100 * baseline.accuracy], marker="s", s=50, c="black", label="unpruned")
    ax.scatter([picked.latency.median_ms], [100 * picked.accuracy], marker="*", s=160, c="#ff7f0e", label="picked")
    ax.set_xlabel("median latency on target (ms, measured)")
    ax.set_ylabel("held-out accuracy after BN recalibration (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_change(before: float, after: float, unit: str) -> str:
    if unit == "pp":
        return f"{100 * (after - before):+.2f} pp"
    return f"{after / before:.2f}×" if before else "-"


# How far the reference may run from its anchor before an absolute verdict is flagged: beyond the
# session-to-session spread seen on a busy shared VM (4-5 %, docs/benchmarks.md).
DRIFT_FLAG = 0.10


def drift_note(report: dict) -> str | None:
    """A line on the machine's drift during the run, when it is large enough to matter.

    A ``--speedup`` budget is a ratio and every latency is a ratio timed next to the unpruned
    model, so drift cannot change its verdict; an absolute budget is judged at the speed the
    baseline was timed at, which a machine that ran at another speed at the end makes uncertain."""
    drift = report.get("drift")
    if not drift:
        return None
    factor = drift["last_factor"]
    if abs(factor - 1) <= DRIFT_FLAG and abs(drift["first_factor"] - 1) <= DRIFT_FLAG:
        return None
    moved = f"the unpruned model ran at {drift['first_factor']:.2f}× its baseline time at the start and {factor:.2f}× at the end"
    if report.get("budget_kind") == "speedup":
        return f"{moved}; the speedup budget is judged by latencies timed next to it, which drift does not change"
    return (
        f"[yellow]warning:[/yellow] {moved}; the absolute budget is judged at the baseline's speed, "
        f"so on this machine the verdict is only as good as that speed (re-check with `edgeprune gate`)"
    )


def print_summary(report: dict, out_dir: Path) -> None:
    base, pruned = report["baseline"], report["pruned"]
    table = Table(title=f"edgeprune · {report['target']} · budget {report['budget_ms']:.4g} ms")
    for col in ("", "baseline", "pruned", "change"):
        table.add_column(col, justify="right" if col else "left")
    rows = [
        ("test accuracy", base["accuracy"], pruned["accuracy"], "{:.2%}", "pp"),
        ("latency median (ms)", base["latency_ms"]["median"], pruned["latency_ms"]["median"], "{:.4f}", "x"),
        ("latency p90 (ms)", base["latency_ms"]["p90"], pruned["latency_ms"]["p90"], "{:.4f}", "x"),
        ("MACs", base["macs"], pruned["macs"], "{:,}", "x"),
        ("params", base["params"], pruned["params"], "{:,}", "x"),
    ]
    for label, before, after, fmt, unit in rows:
        table.add_row(label, fmt.format(before), fmt.format(after), _fmt_change(before, after, unit))
    console.print(table)
    verdict = "[green]met[/green]" if report["budget_met"] else "[red]NOT met[/red]"
    note = drift_note(report)
    if note:
        console.print(note)
    console.print(f"budget {verdict}; files in {out_dir}/: " + ", ".join(sorted(p.name for p in out_dir.iterdir())))
