"""tools/bench_targets.py's table and conclusion, on made-up numbers: the sentence a reader takes
away ("the pick for X is the fastest on X, by N %") must follow from the matrix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
bench = pytest.importorskip("bench_targets")

RUNTIMES = ["ort", "ov", "litert"]


def cells(rows: dict[str, list[float]], spread: float = 0.02) -> dict:
    return {pick: {r: (ratio, spread) for r, ratio in zip(RUNTIMES, values)} for pick, values in rows.items()}


WIDTHS = {"ort": {"a": 16}, "ov": {"a": 32}, "litert": {"a": 48}}
ACCURACY = {"ort": 0.90, "ov": 0.901, "litert": 0.90}


def test_cell_ratio_is_the_median_and_its_relative_range():
    assert bench.cell_ratio([0.5, 0.4, 0.6]) == pytest.approx((0.5, 0.4))


def test_own_pick_fastest_by_the_gap_to_the_next_best():
    ratios = cells({"ort": [0.40, 0.60, 0.55], "ov": [0.50, 0.45, 0.55], "litert": [0.45, 0.50, 0.48]})
    text = bench.verdict("ort", RUNTIMES, ratios, ACCURACY, WIDTHS)
    assert "it is the fastest, 12.5% faster than the next best, the pick for litert (0.450x)" in text
    assert "at equal accuracy" in text and "spread" not in text


def test_own_pick_beaten_is_said_plainly_with_the_rival():
    ratios = cells({"ort": [0.50, 0.60, 0.55], "ov": [0.40, 0.45, 0.55], "litert": [0.45, 0.50, 0.48]})
    text = bench.verdict("ort", RUNTIMES, ratios, ACCURACY, WIDTHS)
    assert "NOT the fastest: the pick for ov runs at 0.400x, 25.0% faster" in text


def test_a_gap_inside_the_spread_is_no_difference():
    ratios = cells({"ort": [0.50, 0.6, 0.6], "ov": [0.51, 0.45, 0.55], "litert": [0.52, 0.5, 0.48]}, spread=0.10)
    assert "within the measurement spread" in bench.verdict("ort", RUNTIMES, ratios, ACCURACY, WIDTHS)


def test_unequal_accuracy_is_named():
    ratios = cells({"ort": [0.50, 0.6, 0.6], "ov": [0.40, 0.45, 0.55], "litert": [0.52, 0.5, 0.48]})
    text = bench.verdict("ort", RUNTIMES, ratios, {"ort": 0.90, "ov": 0.88, "litert": 0.90}, WIDTHS)
    assert "+2.00 pp for its own pick: not equal accuracy" in text


def test_coinciding_picks_are_compared_with_the_fastest_other_network_and_reported():
    widths = {"ort": {"a": 16}, "ov": {"a": 16}, "litert": {"a": 48}}
    ratios = cells({"ort": [0.50, 0.6, 0.6], "ov": [0.40, 0.45, 0.55], "litert": [0.52, 0.5, 0.48]})
    text = bench.verdict("ort", RUNTIMES, ratios, ACCURACY, widths)
    assert "the same network as the pick for ov" in text and "next best, the pick for litert (0.520x)" in text
    lines = bench.conclusion_lines(RUNTIMES, ratios, ACCURACY, widths)
    assert lines[-2] == "- the picks for ort and ov coincide (same widths)."
    assert lines[-1] == "- the same network's cells differ by up to 33.3% on one runtime: a smaller gap between two picks is noise here."
    assert bench.verdict("ort", RUNTIMES, ratios, ACCURACY, dict.fromkeys(RUNTIMES, {"a": 16})).endswith("every other pick is the same network")


def test_matrix_rows_are_picks_columns_runtimes_own_cell_bold():
    ratios = cells({"ort": [0.40, 0.60, 0.55], "ov": [0.50, 0.45, 0.55], "litert": [0.45, 0.50, 0.48]})
    lines = bench.matrix_lines(RUNTIMES, RUNTIMES, ratios, ACCURACY, 0.91)
    assert lines[0] == "| pick (pruned for) | on ort | on ov | on litert | test accuracy |"
    assert lines[2] == "| unpruned | 1.000 | 1.000 | 1.000 | 91.00% |"
    assert lines[4] == "| ov | 0.500 ±1% | **0.450 ±1%** | 0.550 ±1% | 90.10% |"
