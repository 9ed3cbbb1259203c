"""What a run shows besides report.json (built by :mod:`edgeprune.report.builder`): pareto.png and
the before/after table printed at the end of a run (report.html is :mod:`edgeprune.report.html`).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or edge build hosts
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgeprune.report.html import HTML_FILE, anchor_text, drift_text  # noqa: E402
from edgeprune.records import Candidate  # noqa: E402
from edgeprune.progress import console  # noqa: E402

# The widest the end-of-prune summary gets, whatever the terminal.
SUMMARY_COLUMNS = 100


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
    *,
    final: tuple[float, float] | None = None,
    baseline_test: float | None = None,
    final_robust: float | None = None,
    baseline_robust: float | None = None,
) -> None:
    """Every evaluated candidate, the feasible front, the budget, the baseline and the pick.

    The candidates' accuracies are the search's proxy (held-out TRAIN images after BatchNorm
    recalibration, before any fine-tune), far below what a fine-tuned network scores: the plot
    says so on every proxy mark, and draws the delivered model, ``final`` = (latency ms, test
    accuracy after the final fine-tune), and the unpruned model's test accuracy where given, so
    the pick is never read as the delivered model. Without ``final`` it points to report.html.
    Where robustness is an objective, the front's and the pick's robust accuracy on the shared
    adversarial set are drawn as triangles, and ``final_robust`` / ``baseline_robust`` (the
    delivered and the unpruned model's test accuracy under PGD) beside those models."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    ax.scatter([c.latency.median_ms for c in candidates], [100 * c.accuracy for c in candidates], s=12, c="#9aa5b1",
               label=f"evaluated ({len(candidates)}) · proxy")
    ax.plot([c.latency.median_ms for c in pareto], [100 * c.accuracy for c in pareto], "o-", c="#1f77b4", ms=5,
            label="Pareto front within budget · proxy")
    ax.axvline(budget_ms, ls="--", c="#d62728", label=f"budget {budget_ms:.4g} ms")
    ax.scatter([baseline.latency.median_ms], [100 * baseline.accuracy], marker="s", s=50, facecolors="none", edgecolors="black",
               label="unpruned · proxy")
    ax.scatter([picked.latency.median_ms], [100 * picked.accuracy], marker="*", s=170, facecolors="none", edgecolors="#ff7f0e",
               linewidths=1.5, label="pick before its fine-tune · proxy")
    _robust_marks(ax, pareto, picked, baseline, final, final_robust, baseline_robust)
    if baseline_test is not None:
        ax.scatter([baseline.latency.median_ms], [100 * baseline_test], marker="s", s=50, c="black", label=f"unpruned · test {baseline_test:.2%}")
    if final is not None:
        ax.annotate("", xy=(final[0], 100 * final[1]), xytext=(picked.latency.median_ms, 100 * picked.accuracy),
                    arrowprops={"arrowstyle": "->", "color": "#ff7f0e", "ls": "--"})
        ax.scatter([final[0]], [100 * final[1]], marker="*", s=200, c="#ff7f0e", edgecolors="#7c2d12", zorder=5,
                   label=f"delivered · test {final[1]:.2%} after fine-tune")
    else:
        ax.text(0.01, 0.99, "proxy accuracies rank candidates only; the delivered model's\ntest accuracy after fine-tune: report.html",
                transform=ax.transAxes, va="top", fontsize=7.5, color="#7c2d12")
    ax.set_xlabel("median latency on target (ms, measured)")
    ax.set_ylabel("accuracy (%): proxy = held-out after BN recalibration")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _robust_marks(ax, pareto: list[Candidate], picked: Candidate, baseline: Candidate, final, final_robust, baseline_robust) -> None:
    """The robust accuracies of :func:`plot_pareto`, as triangles beside the clean ones."""
    robust = [c for c in pareto if "robustness" in getattr(c, "scores", {})]
    if robust:  # robustness is an objective: the front's robust accuracy on the shared set, and the pick's
        ax.plot([c.latency.median_ms for c in robust], [100 * c.scores["robustness"] for c in robust], "^:", c="#2ca02c", ms=5,
                label="Pareto front · robust accuracy on the shared adversarial set")
        if "robustness" in getattr(picked, "scores", {}):
            ax.scatter([picked.latency.median_ms], [100 * picked.scores["robustness"]], marker="^", s=120, facecolors="none",
                       edgecolors="#ff7f0e", linewidths=1.5, label="pick before its fine-tune · robust")
    if baseline_robust is not None:
        ax.scatter([baseline.latency.median_ms], [100 * baseline_robust], marker="^", s=60, c="black",
                   label=f"unpruned · test robust accuracy {baseline_robust:.2%} (PGD)")
    if final_robust is not None and final is not None:
        ax.scatter([final[0]], [100 * final_robust], marker="^", s=150, c="#ff7f0e", edgecolors="#7c2d12", zorder=5,
                   label=f"delivered · test robust accuracy {final_robust:.2%} (PGD)")


def _fmt_change(before: float, after: float, unit: str) -> str:
    if unit == "pp":
        return f"{100 * (after - before):+.2f} pp"
    return f"{after / before:.2f}×" if before else "-"


def drift_note(report: dict) -> str | None:
    """:func:`edgeprune.report.html.drift_text` for the terminal: a doubtful verdict in yellow."""
    found = drift_text(report)
    if found is None:
        return None
    text, doubtful = found
    return f"[yellow]warning:[/yellow] {text}" if doubtful else text


def _score_label(report: dict) -> str:
    """``test accuracy`` for classification; a user task's metric, and where it was scored."""
    task = report.get("task") or {}
    if task.get("kind", "classification") == "classification":
        return "test accuracy"
    return f"{'test ' if task.get('test_split') else ''}{task.get('metric', 'score')}"


def print_summary(report: dict, out_dir: Path, out: Console | None = None) -> None:
    """The before/after table, the verdict and where the files are, at the end of a prune.

    At most ``SUMMARY_COLUMNS`` wide whatever the terminal (CI logs keep long lines, narrow
    terminals wrap them into noise), with report.html's path on a line of its own, never
    wrapped, so it can be copied or clicked."""
    out = out or console
    width = min(out.width, SUMMARY_COLUMNS)
    base, pruned = report["baseline"], report["pruned"]
    table = Table(title=f"edgeprune · {report['target']} · budget {report['budget_ms']:.4g} ms median", title_justify="left")
    for col in ("", "baseline", "pruned", "change"):
        table.add_column(col, justify="right" if col else "left")
    rows = [
        (_score_label(report), base["accuracy"], pruned["accuracy"], "{:.2%}", "pp"),
        *((f"latency {k} (ms)", base["latency_ms"][k], pruned["latency_ms"][k], "{:.4f}", "x") for k in ("median", "p90", "p99")),
        *([(f"robust accuracy (PGD-{report['robustness']['attack']['steps']})", base["robust_accuracy"], pruned["robust_accuracy"], "{:.2%}", "pp")]
          if "robust_accuracy" in base else []),
        ("MACs", base["macs"], pruned["macs"], "{:,}", "x"),
        ("params", base["params"], pruned["params"], "{:,}", "x"),
        *([("peak memory (MiB)", report["memory"]["baseline"]["peak_mb"], report["memory"]["pruned"]["peak_mb"], "{:.1f}", "x")] if "memory" in report else []),
    ]
    for label, before, after, fmt, unit in rows:
        table.add_row(label, fmt.format(before), fmt.format(after), _fmt_change(before, after, unit))
    out.print(table, width=width)
    latency_met = report.get("memory", {}).get("latency_met", report["budget_met"])  # budget_met holds both budgets there
    verdict = "[green]met[/green]" if latency_met else "[red]NOT met[/red]"
    reached = base["latency_ms"]["median"] / pruned["latency_ms"]["median"]
    out.print(
        f"budget {verdict}: pruned {pruned['latency_ms']['median']:.4f} ms median against {report['budget_ms']:.4g} ms "
        f"(reached {reached:.2f}x the unpruned model's speed, asked {base['latency_ms']['median'] / report['budget_ms']:.2f}x)",
        width=width,
    )
    memory = report.get("memory")
    if memory is not None and memory["limit_mb"] is not None:
        verdict = "[green]met[/green]" if memory["met"] else "[red]NOT met[/red]"
        out.print(f"memory limit {verdict}: {memory['file']} peaks at {memory['pruned']['peak_mb']:.1f} MiB for one inference against {memory['limit_mb']:g} MiB", width=width)
    dropped = report["pruned"].get("dropped_blocks") or []
    if dropped:
        out.print(f"dropped residual blocks ({len(dropped)}): {', '.join(dropped)}", width=width)
    for note in (drift_note(report), anchor_text(report)):
        if note:
            out.print(note, width=width)
    out.print("files: " + ", ".join(sorted(p.name for p in out_dir.iterdir())), width=width)
    page = out_dir / HTML_FILE
    if page.is_file():
        out.print(f"report: {page}", soft_wrap=True, highlight=False)
