"""Charts as inline SVG text: the few kinds report.html and the gate page draw, and nothing else.

Stdlib only, so the CI gate (no torch, no matplotlib) can draw its page too. Every string that
reaches the markup goes through :func:`esc`: labels come from report.json, manifest.json and
budgets files, which may be someone else's. Hover details are SVG ``<title>`` elements (the
browser's own tooltips), so no chart needs a script.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

FONT = 11  # px, tick labels and annotations
GREY, BLUE, RED, ORANGE, PURPLE, GREEN = "#6b7280", "#2563eb", "#dc2626", "#ea580c", "#7c3aed", "#16a34a"


def esc(value: object) -> str:
    """``value`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def num(value: object) -> float | None:
    """A finite number, or None for anything else (a bool, a string, NaN, a missing value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    return f"{value:.6g}"


@dataclass
class Scale:
    """Linear map from data [lo, hi] to pixels [a, b] (b < a for a y axis)."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, value: float) -> float:
        if self.hi <= self.lo:
            return (self.a + self.b) / 2
        return self.a + (value - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def span(values: list[float], zero: bool = False, pad: float = 0.06) -> tuple[float, float]:
    """Data range of ``values`` with a margin; from 0 when ``zero``; never empty."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if zero:
        lo = min(lo, 0.0)
    if hi <= lo:
        lo, hi = (lo - 0.5, hi + 0.5) if lo == 0 else (lo * 0.9, hi * 1.1)
        lo, hi = min(lo, hi), max(lo, hi)
    margin = (hi - lo) * pad
    return (lo if zero and lo == 0 else lo - margin), hi + margin


def svg(width: int, height: int, body: list[str], label: str, css_id: str = "") -> str:
    """One chart: a sized ``<svg>`` with an accessible name."""
    ident = f' id="{esc(css_id)}"' if css_id else ""
    return (
        f'<svg{ident} class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(label)}">' + "".join(body) + "</svg>"
    )


def text(x: float, y: float, content: object, anchor: str = "start", size: int = FONT, fill: str = "#111827", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"{extra}>{esc(content)}</text>'
    )


def titled(shape: str, title: str) -> str:
    """A self-closing SVG element (``<rect .../>``) with a hover tooltip added."""
    tag = shape.split(" ", 1)[0].lstrip("<")
    return f"{shape.removesuffix('/>').rstrip()}><title>{esc(title)}</title></{tag}>"


def axes(x: Scale, y: Scale, x_label: str, y_label: str, y_ticks: bool = True) -> list[str]:
    """Grid lines, ticks and axis titles of a plot whose frame is x.a..x.b by y.b..y.a (bar
    charts pass ``y_ticks=False``: their rows are named, not measured)."""
    out = [f'<rect x="{x.a:.1f}" y="{y.b:.1f}" width="{x.b - x.a:.1f}" height="{y.a - y.b:.1f}" fill="#fff" stroke="#d1d5db"/>']
    for t in nice_ticks(x.lo, x.hi):
        if x.lo <= t <= x.hi:
            px = x(t)
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y.b:.1f}" y2="{y.a:.1f}" stroke="#eef0f3"/>')
            out.append(text(px, y.a + 14, tick_label(t), "middle", fill=GREY))
    for t in nice_ticks(y.lo, y.hi) if y_ticks else []:
        if y.lo <= t <= y.hi:
            py = y(t)
            out.append(f'<line x1="{x.a:.1f}" x2="{x.b:.1f}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eef0f3"/>')
            out.append(text(x.a - 6, py + 4, tick_label(t), "end", fill=GREY))
    out.append(text((x.a + x.b) / 2, y.a + 32, x_label, "middle"))
    mid = (y.a + y.b) / 2
    out.append(text(14, mid, y_label, "middle", extra=f' transform="rotate(-90 14 {mid:.1f})"'))
    return out


def star(cx: float, cy: float, r: float) -> str:
    """Points of a five-pointed star centred on (cx, cy)."""
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = math.pi / 2 + i * math.pi / 5
        points.append(f"{cx + radius * math.cos(angle):.1f},{cy - radius * math.sin(angle):.1f}")
    return " ".join(points)


def mix(light: str, dark: str, t: float) -> str:
    """The colour a fraction ``t`` of the way from ``light`` to ``dark`` (#rrggbb)."""
    a = [int(light[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(dark[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(u + (v - u) * t):02x}" for u, v in zip(a, b))


def paired_bars(rows: list[tuple[str, float | None, float | None]], unit: str, label: str, css_id: str, fmt=tick_label) -> str:
    """Horizontal bars, two per row (before in grey, after in blue), value labels at the ends.

    ``rows`` are (name, before, after); a None is drawn as no bar and labelled "–"."""
    name_w, width, row_h = 150, 620, 22
    values = [v for _, b, a in rows for v in (b, a) if v is not None]
    x = Scale(*span(values, zero=True, pad=0.02), name_w, width - 110)
    height = 30 + row_h * len(rows) + 36
    body = axes(x, Scale(0, 1, height - 36, 20), unit, "", y_ticks=False)
    for i, (name, before, after) in enumerate(rows):
        top = 24 + i * row_h
        shown = name if len(name) <= 24 else name[:11] + "…" + name[-11:]
        body.append(text(name_w - 6, top + 13, shown, "end").replace("</text>", f"<title>{esc(name)}</title></text>"))
        for offset, value, colour, which in ((2, before, GREY, "before"), (10, after, BLUE, "after")):
            if value is None:
                continue
            w = max(x(value) - x.a, 0.5)
            body.append(titled(f'<rect x="{x.a:.1f}" y="{top + offset:.1f}" width="{w:.1f}" height="7" fill="{colour}"/>', f"{name} {which}: {fmt(value)} {unit}"))
        values_text = f"{'–' if before is None else fmt(before)} → {'–' if after is None else fmt(after)}"
        body.append(text(x.b + 6, top + 13, values_text, fill=GREY))
    return svg(width, height, body, label, css_id)


def stat_boxes(rows: list[tuple[str, dict, str]], budget: float | None, label: str, css_id: str) -> str:
    """One box per row from recorded statistics: median→p90 box, p90→p99 whisker, mean ± std.

    ``rows`` are (name, {median, p90, p99, mean, std}, colour). The axis ends at three times the
    largest p90, so one stray p99 (a scheduler hiccup) cannot squash every box: a whisker that
    goes further ends in an arrow with its value. The budget is a dashed line when it falls
    inside the drawn range, a note at the right edge otherwise."""
    name_w, width, row_h = 150, 880, 46
    stats = [{k: num(s.get(k)) for k in ("median", "p90", "p99", "mean", "std")} for _, s, _ in rows]
    top_values = [v for s in stats for v in (s["p99"], (s["mean"] or 0) + (s["std"] or 0)) if v is not None]
    cap = 3 * max((s["p90"] or s["median"] or 0 for s in stats), default=0) or None
    hi = min(max(top_values, default=1.0), cap or math.inf)
    show_budget = budget is not None and budget <= 1.5 * hi
    x = Scale(*span([hi] + ([budget] if show_budget else []), zero=True, pad=0.04), name_w, width - 30)
    height = 20 + row_h * len(rows) + 40
    body = axes(x, Scale(0, 1, height - 40, 14), "latency on the target (ms)", "", y_ticks=False)
    for i, ((name, _, colour), s) in enumerate(zip(rows, stats)):
        body += _one_box(x, 20 + i * row_h, name, s, colour)
    if show_budget:
        bx = x(budget)
        body.append(f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="14" y2="{height - 40:.1f}" stroke="{RED}" stroke-dasharray="6 4" stroke-width="1.5"/>')
        body.append(text(bx + 4, 26, f"budget {budget:.4g} ms (median)", fill=RED))
    elif budget is not None:
        body.append(text(x.b - 4, 26, f"budget {budget:.4g} ms: beyond the right edge →", "end", fill=RED))
    return svg(width, height, body, label, css_id)


def _one_box(x: Scale, top: float, name: str, s: dict, colour: str) -> list[str]:
    out = [text(x.a - 8, top + 20, name, "end")]
    median, p90, p99, mean, std = (s[k] for k in ("median", "p90", "p99", "mean", "std"))
    if median is None:
        return out + [text(x.a + 6, top + 20, "not recorded", fill=GREY)]
    mid = top + 16
    if p99 is not None and p99 > x.hi:  # beyond the axis: an arrow to the edge, and the value
        out.append(f'<line x1="{x(p90 or median):.1f}" x2="{x.b:.1f}" y1="{mid:.1f}" y2="{mid:.1f}" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<polygon points="{x.b:.1f},{mid:.1f} {x.b - 7:.1f},{mid - 4:.1f} {x.b - 7:.1f},{mid + 4:.1f}" fill="{colour}"/>')
        out.append(text(x.b - 10, mid - 6, f"p99 {p99:.4g} ms", "end", fill=colour))
    elif p99 is not None:
        out.append(f'<line x1="{x(p90 or median):.1f}" x2="{x(p99):.1f}" y1="{mid:.1f}" y2="{mid:.1f}" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<line x1="{x(p99):.1f}" x2="{x(p99):.1f}" y1="{mid - 6:.1f}" y2="{mid + 6:.1f}" stroke="{colour}" stroke-width="1.5"/>')
    if p90 is not None:
        out.append(titled(
            f'<rect x="{x(median):.1f}" y="{mid - 9:.1f}" width="{max(x(p90) - x(median), 1):.1f}" height="18" fill="{colour}" fill-opacity="0.25" stroke="{colour}"/>',
            f"{name}: median {median:.4g} ms, p90 {p90:.4g} ms" + (f", p99 {p99:.4g} ms" if p99 is not None else ""),
        ))
    out.append(f'<line x1="{x(median):.1f}" x2="{x(median):.1f}" y1="{mid - 11:.1f}" y2="{mid + 11:.1f}" stroke="{colour}" stroke-width="3"/>')
    if mean is not None:
        if std is not None:
            lo, hi = max(mean - std, x.lo), min(mean + std, x.hi)  # the axis clips it, as it clips p99
            out.append(f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{mid + 16:.1f}" y2="{mid + 16:.1f}" stroke="{GREY}"/>')
        out.append(titled(f'<circle cx="{x(min(mean, x.hi)):.1f}" cy="{mid + 16:.1f}" r="3.5" fill="{GREY}"/>', f"{name}: mean {mean:.4g} ms" + (f" ± std {std:.4g}" if std is not None else "")))
    return out
