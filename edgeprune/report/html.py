"""``report.html``: one self-contained page of a run, rebuilt from the folder's own JSON.

The page is for people who open an output folder from a shared drive or a CI artifact, often
with no network: it draws everything from report.json and manifest.json as **inline SVG written
here**, with no JavaScript at all. Why not plotly (the other option that works offline): its
bundled JS is 3.5 MB or more per page (most of the 5 MB an output folder page may weigh), it runs
code to draw, so a broken or blocked script shows blank charts, and its hover UI is not needed
for a few hundred points. Inline SVG is a few tens of kB, renders with scripts off, prints, and
the page's Content-Security-Policy can forbid every script and every load (``CSP`` below): even
a string that slipped past escaping could not run or fetch anything.

report.json in a folder may be someone else's, so every string is escaped (:func:`esc`), links
go only to plain file names inside the folder (:func:`inside`), and nothing is read from outside
it. Numbers are what report.json and manifest.json record; the page says which are proxies.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from urllib.parse import quote

from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.untrusted import read_json
from edgeprune.report.charts import BLUE, GREY, ORANGE, PURPLE, RED, Scale, axes, esc, mix, num, paired_bars, span, star, stat_boxes, svg, text, titled

HTML_FILE = "report.html"
REPORT_JSON = "report.json"
MANIFEST_JSON = "manifest.json"
# Styles inline, nothing else: no script, image, font, frame or connection of any origin.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
FIX = "pass a folder written by `edgeprune prune`"
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

# How far the reference may run from its anchor before an absolute verdict is flagged: beyond the
# session-to-session spread seen on a busy shared VM (4-5 %, docs/benchmarks.md).
DRIFT_FLAG = 0.10

# What the page shows of manifest.json, a file anyone may have written: a folder edgeprune writes
# lists about ten files with hashes of 64 characters, so these bounds cut only a crafted manifest
# (16 MiB of it made a 16 MiB page).
MAX_MANIFEST_FILES = 64
MAX_MANIFEST_TEXT = 200
_MAX_MANIFEST_ITEMS = 64  # entries of any other list or object
_MAX_MANIFEST_DEPTH = 8


# --- reading the folder ------------------------------------------------------------------------


def plain_name(name: object) -> bool:
    """A relative file name of at most four plain parts: no ``..``, no absolute path, no oddities."""
    parts = name.split("/") if isinstance(name, str) else []
    return 0 < len(parts) <= 4 and all(_SAFE_PART.match(p) for p in parts)


def inside(folder: Path, name: object) -> Path | None:
    """``folder/name`` when ``name`` is a plain relative file name whose file (links resolved) is
    a regular file inside ``folder``; None otherwise (``../x``, ``/etc/x``, a link out, absent)."""
    if not plain_name(name):
        return None
    path = folder / name
    try:
        if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
            return None
    except OSError:
        return None
    return path


def read_folder(folder: Path) -> tuple[dict, dict | None]:
    """report.json (checked against its schema) and manifest.json (None when the folder has none)."""
    from edgeprune.report.schema import report_problems

    if not folder.is_dir():
        raise UserError(f"output folder {folder} not found; {FIX}")
    if inside(folder, REPORT_JSON) is None:
        raise UserError(f"{folder} has no report.json (or it links outside the folder); {FIX}")
    report = read_json(folder / REPORT_JSON, "run `edgeprune prune` again to rewrite the folder")
    if not isinstance(report, dict):
        raise UserError(f"{folder / REPORT_JSON} is not a JSON object; {FIX}")
    problems = report_problems(report)
    if problems:
        raise UserError(f"{folder / REPORT_JSON} is not a report edgeprune writes ({problems[0]}); run `edgeprune prune` again")
    manifest = None
    if (folder / MANIFEST_JSON).exists() or (folder / MANIFEST_JSON).is_symlink():
        if inside(folder, MANIFEST_JSON) is None:
            raise UserError(f"{folder / MANIFEST_JSON} links outside the folder; {FIX}")
        manifest = read_json(folder / MANIFEST_JSON, "run `edgeprune export` on the folder to rewrite it")
        if not isinstance(manifest, dict):
            raise UserError(f"{folder / MANIFEST_JSON} is not a JSON object; run `edgeprune export` on the folder to rewrite it")
        listed = manifest.get("artifacts")
        manifest = _bounded(manifest, MAX_MANIFEST_FILES)
        manifest["files_listed"] = len(listed) if isinstance(listed, list) else 0
    return report, manifest


def _bounded(value: object, items: int = _MAX_MANIFEST_ITEMS, depth: int = 0) -> object:
    """``value`` cut to what a page shows: strings to MAX_MANIFEST_TEXT characters, lists and
    objects to ``items`` entries (the top level's ``artifacts`` to MAX_MANIFEST_FILES), nesting to
    _MAX_MANIFEST_DEPTH levels."""
    if depth > _MAX_MANIFEST_DEPTH:
        return None
    if isinstance(value, str):
        return value if len(value) <= MAX_MANIFEST_TEXT else value[:MAX_MANIFEST_TEXT] + "…"
    if isinstance(value, list):
        return [_bounded(v, depth=depth + 1) for v in value[:items]]
    if isinstance(value, dict):
        out = {}
        for key, v in list(value.items())[:_MAX_MANIFEST_ITEMS]:
            key = str(key)[:MAX_MANIFEST_TEXT]
            out[key] = _bounded(v, MAX_MANIFEST_FILES if depth == 0 and key == "artifacts" else _MAX_MANIFEST_ITEMS, depth + 1)
        return out
    return value


def write_report_html(folder: Path) -> Path:
    """(Re)build ``folder/report.html`` from the folder's JSON; written under a temporary name and
    renamed into place, so a reader never sees half a page."""
    folder = Path(folder)
    path = folder / HTML_FILE
    try:
        report, manifest = read_folder(folder)
        digest = hashlib.sha256((folder / REPORT_JSON).read_bytes()).hexdigest()
        atomic_write(path, render_report(report, manifest, folder, digest).encode("utf-8"))
    except OSError as exc:  # a read-only shared drive, a file we may not read
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); copy the folder somewhere writable and run it there") from None
    return path


# --- small helpers -----------------------------------------------------------------------------


def _d(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: object) -> list:
    return value if isinstance(value, list) else []


def pct(value: object) -> str:
    v = num(value)
    return "–" if v is None else f"{100 * v:.2f} %"


def ms(value: object) -> str:
    v = num(value)
    if v is None:
        return "–"
    return f"{v:.4f}" if v < 1 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def count(value: object) -> str:
    v = num(value)
    return "–" if v is None else f"{int(v):,}"


def size(value: object) -> str:
    v = num(value)
    if v is None:
        return "–"
    for unit in ("B", "KiB", "MiB"):
        if v < 1024 or unit == "MiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return "–"


def ratio(before: object, after: object) -> str:
    b, a = num(before), num(after)
    return "–" if b is None or a is None or b == 0 else f"{a / b:.2f}×"


def drift_text(report: dict) -> tuple[str, bool] | None:
    """A sentence on the machine's drift during the run and whether it puts the verdict in doubt;
    None when the drift is too small to matter.

    A ``--speedup`` budget is a ratio and every latency is a ratio timed next to the unpruned
    model, so drift cannot change its verdict; an absolute budget is judged at the speed the
    baseline was timed at, which a machine that ran at another speed at the end makes uncertain."""
    drift = _d(report.get("drift"))
    first, last = num(drift.get("first_factor")), num(drift.get("last_factor"))
    if first is None or last is None or (abs(last - 1) <= DRIFT_FLAG and abs(first - 1) <= DRIFT_FLAG):
        return None
    moved = f"the unpruned model ran at {first:.2f}× its baseline time at the start and {last:.2f}× at the end"
    if report.get("budget_kind") == "speedup":
        return f"{moved}; the speedup budget is judged by latencies timed next to it, which drift does not change", False
    return (
        f"{moved}; the absolute budget is judged at the baseline's speed, so on this machine the verdict "
        "is only as good as that speed (re-check with `edgeprune gate`)"
    ), True


def anchor_text(report: dict) -> str | None:
    """A sentence when the cached baseline was re-timed and replaced (None otherwise): every
    latency of the run is in the baseline's units, so the user should know they changed."""
    check = _d(report.get("anchor_check"))
    cached, fresh = num(check.get("cached_ms")), num(check.get("fresh_ms"))
    if check.get("kept_cached") is not False or cached is None or fresh is None:
        return None
    return (
        f"the cached baseline ({cached:.4f} ms) timed {fresh:.4f} ms now, twice more than "
        f"{100 * (num(check.get('tolerance')) or 0):g} % off: the fresh one set this run's units and the latencies "
        "cached against the old one were timed again"
    )


def _table(head: list[str], rows: list[list[str]], css: str = "") -> str:
    """An HTML table; ``head`` and ``rows`` hold already-escaped cell markup."""
    cls = f' class="{css}"' if css else ""
    out = [f"<table{cls}><thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</tbody></table>"


def _int8(manifest: dict | None) -> dict | None:
    model = _d(_d(_d(manifest).get("models")).get("int8"))
    return model or None


def _file_bytes(manifest: dict | None, name: object) -> object:
    return next((a.get("bytes") for a in _l(_d(manifest).get("artifacts")) if isinstance(a, dict) and a.get("file") == name), None)


# --- sections ----------------------------------------------------------------------------------


def _header(r: dict, manifest: dict | None) -> str:
    base, pruned = _d(r.get("baseline")), _d(r.get("pruned"))
    base_lat, lat = _d(base.get("latency_ms")), _d(pruned.get("latency_ms"))
    spec, target = _d(r.get("model")).get("spec", "model"), r.get("target", "?")
    met = r.get("budget_met") is True
    kind = {"speedup": "a speedup budget", "absolute": "an absolute budget"}.get(r.get("budget_kind"), "the budget")
    verdict = "Budget met" if met else "Budget NOT met"
    speed = ratio(lat.get("median"), base_lat.get("median"))
    out = [
        f"<header><h1>{esc(spec)} <span class=sub>pruned for</span> {esc(target)}</h1>",
        f'<p class="verdict {"ok" if met else "bad"}">{verdict}: {esc(ms(lat.get("median")))} ms median against '
        f"{esc(ms(r.get('budget_ms')))} ms ({esc(kind)})</p>",
        f'<p class=lede>The delivered model scores <b id="final-accuracy">{esc(pct(pruned.get("accuracy")))}</b> '
        f"{esc(_metric(r))} on {esc(_scored_on(r))} after fine-tuning (unpruned: {esc(pct(base.get('accuracy')))}) and takes {esc(speed)} the unpruned model's median "
        f"latency ({esc(ms(base_lat.get('median')))} ms), with {esc(ratio(base.get('macs'), pruned.get('macs')))} its MACs.</p>",
    ]
    drift = drift_text(r)
    if drift:
        out.append(f'<p class="{"warn" if drift[1] else "note"}">Drift: {esc(drift[0])}.</p>')
    dropped = [str(b) for b in _d(r.get("pruned")).get("dropped_blocks") or []]
    if dropped:
        out.append(f'<p class="note">Dropped residual blocks ({len(dropped)}): {esc(", ".join(dropped))}.</p>')
    anchor = anchor_text(r)
    if anchor:
        out.append(f'<p class="note">Baseline: {esc(anchor)}.</p>')
    fp_hash = _d(r.get("export")).get("fingerprint_hash") or _d(manifest).get("fingerprint_hash")
    out.append(
        f"<p class=meta>edgeprune {esc(r.get('edgeprune_version', '?'))} · plan {esc(_d(r.get('export')).get('plan_sha256_16', '–'))}"
        f" · device fingerprint {esc(fp_hash or '–')} · data {esc(_d(r.get('data')).get('name', '?'))}</p>"
    )
    sections = ("summary", "before/after"), ("front", "search front"), ("layers", "per layer"), ("latency", "latency"), (
        "device", "device"), ("artifacts", "files")
    out.append("<nav>" + " · ".join(f'<a href="#{a}">{t}</a>' for a, t in sections) + "</nav></header>")
    return "".join(out)


def _metric(r: dict) -> str:
    """What the report's accuracy fields measure: top-1 for classification, the task's metric else."""
    return str(_d(r.get("task")).get("metric") or "top-1 accuracy")


def _scored_on(r: dict) -> str:
    return "the test split" if _d(r.get("task")).get("test_split", True) is not False else "the task's score data"


def _compare(r: dict, manifest: dict | None) -> str:
    """The before/after table: test accuracy, latency with the budget, MACs, params, file sizes."""
    base, pruned = _d(r.get("baseline")), _d(r.get("pruned"))
    bl, pl = _d(base.get("latency_ms")), _d(pruned.get("latency_ms"))
    fp32 = _d(_d(_d(manifest).get("models")).get("fp32"))
    int8 = _int8(manifest)
    il = _d(int8.get("latency_ms")) if int8 else {}
    budget = num(r.get("budget_ms"))
    acc_change = "–" if num(base.get("accuracy")) is None or num(pruned.get("accuracy")) is None else (
        f"{100 * (pruned['accuracy'] - base['accuracy']):+.2f} pp")
    onnx_name, int8_name = _d(r.get("artifacts")).get("onnx"), _d(r.get("artifacts")).get("int8")
    rows = [
        [f"{_metric(r)} (torch)", pct(base.get("accuracy")), pct(pruned.get("accuracy")), acc_change, "–"],
        [f"{_metric(r)} (ONNX Runtime)", "–", pct(_d(fp32.get("accuracy")).get("test")), "", pct(_d(_d(int8).get("accuracy")).get("test"))],
        *([[f"robust accuracy (PGD-{_d(_d(r.get('robustness')).get('attack')).get('steps', '?')}, torch)", pct(base.get("robust_accuracy")),
            pct(pruned.get("robust_accuracy")), "–" if num(base.get("robust_accuracy")) is None or num(pruned.get("robust_accuracy")) is None
            else f"{100 * (pruned['robust_accuracy'] - base['robust_accuracy']):+.2f} pp", "–"]] if "robust_accuracy" in pruned else []),
        *([f"latency {k} (ms)", ms(bl.get(k)), ms(pl.get(k)), ratio(bl.get(k), pl.get(k)), ms(il.get(k))] for k in ("median", "p90", "p99")),
        ["latency budget (median, ms)", "", f"{ms(budget)} · {'met' if _d(r.get('memory')).get('latency_met', r.get('budget_met')) is True else 'NOT met'}", "",
         "–" if not il else f"{ms(budget)} · {'met' if (num(il.get('median')) or 0) <= (budget or 0) else 'NOT met'}"],
        ["MACs", count(base.get("macs")), count(pruned.get("macs")), ratio(base.get("macs"), pruned.get("macs")), "–"],
        ["parameters", count(base.get("params")), count(pruned.get("params")), ratio(base.get("params"), pruned.get("params")), "–"],
        ["ONNX file", "not exported", size(_file_bytes(manifest, onnx_name)), "", size(_file_bytes(manifest, int8_name)) if int8_name else "–"],
    ]
    head = ["", "unpruned", "pruned · " + str(onnx_name or "model.onnx"), "change"]
    if int8:
        head.append("INT8 · " + (str(int8_name) if int8.get("accepted") else "refused, not written"))
    else:
        rows = [row[:4] for row in rows]
    notes = [
        "Accuracies are on the test split; the search never saw it. The unpruned model has no ONNX file in the folder.",
    ]
    if int8:
        notes.append("INT8: NNCF post-training quantization, accuracy and latency measured like FP32's (ONNX Runtime).")
    body = [[esc(c) for c in row] for row in rows]
    return f'<section id="summary"><h2>Before and after</h2>{_table([esc(h) for h in head], body, "num")}' + "".join(
        f"<p class=note>{esc(n)}</p>" for n in notes) + "</section>"


def _fronts(r: dict) -> list[tuple[str, list[tuple[float, float]]]]:
    """(label, [(latency ms, proxy accuracy %)]) per generation, from search.history[].pareto;
    the final front alone when no history was recorded."""
    out = []
    for h in _l(_d(r.get("search")).get("history")):
        h = _d(h)
        points = [(num(_d(p).get("latency_ms")), num(_d(p).get("accuracy"))) for p in _l(h.get("pareto"))]
        points = sorted((x, 100 * y) for x, y in points if x is not None and y is not None)
        if points:
            label = f"round {h.get('round', '?')}, generation {h.get('generation', '?')}"
            out.append((label, points))
    if not out:
        points = [(num(_d(p).get("latency_ms")), num(_d(p).get("accuracy"))) for p in _l(r.get("pareto"))]
        out = [("final front", sorted((x, 100 * y) for x, y in points if x is not None and y is not None))]
    return out


def _shortlist(r: dict) -> list[tuple[float, float | None, float, bool]]:
    """(latency, adaptive-BN %, short-tuned %, picked) of every shortlisted candidate."""
    out = []
    for rnd in _l(r.get("rounds")):
        for row in _l(_d(rnd).get("short_tune")):
            row = _d(row)
            x, bn, tuned = num(row.get("latency_ms")), num(row.get("holdout_accuracy_adaptive_bn")), num(row.get("holdout_accuracy_short_tune"))
            if x is not None and tuned is not None:
                out.append((x, None if bn is None else 100 * bn, 100 * tuned, row.get("picked") is True))
    return out


def _marks(r: dict) -> dict[str, tuple[float, float] | None]:
    """The points marked on the front: the pick's proxy, the delivered model, the unpruned one."""
    last = _d((_l(r.get("rounds")) or [{}])[-1])
    base, pruned = _d(r.get("baseline")), _d(r.get("pruned"))

    def point(x, y):
        return None if num(x) is None or num(y) is None else (num(x), 100 * num(y))

    return {
        "pick": point(last.get("latency_ms"), last.get("holdout_accuracy_before_finetune")),
        "final": point(_d(pruned.get("latency_ms")).get("median"), pruned.get("accuracy")),
        "base": point(_d(base.get("latency_ms")).get("median"), base.get("accuracy")),
    }


def _front_chart(r: dict) -> str:
    fronts, short, marks = _fronts(r), _shortlist(r), _marks(r)
    xs = [x for _, pts in fronts for x, _ in pts] + [s[0] for s in short] + [m[0] for m in marks.values() if m]
    ys = [y for _, pts in fronts for _, y in pts] + [v for s in short for v in s[1:3] if v is not None] + [m[1] for m in marks.values() if m]
    budget = num(r.get("budget_ms"))
    show_budget = budget is not None and budget <= 1.5 * max(xs, default=budget)
    width, height = 900, 440
    x = Scale(*span(xs + ([budget] if show_budget else []), zero=True, pad=0.05), 70, width - 20)
    lo, hi = span(ys, pad=0.12)
    y = Scale(max(lo, 0.0), min(hi, 100.0), height - 50, 16)
    body = axes(x, y, "median latency on the target (ms, measured)", "accuracy (%)")
    for i, (label, pts) in enumerate(fronts):
        colour = mix("#c7d2fe", "#1e3a8a", i / max(len(fronts) - 1, 1))
        line = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        body.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body += [titled(f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3.5" fill="{colour}"/>', f"{label}: {a:.4g} ms, proxy {b:.2f} %") for a, b in pts]
    for lat, bn, tuned, picked in short:
        colour = ORANGE if picked else PURPLE
        if bn is not None:
            body.append(f'<line x1="{x(lat):.1f}" x2="{x(lat):.1f}" y1="{y(bn):.1f}" y2="{y(tuned):.1f}" stroke="{colour}" stroke-dasharray="2 2"/>')
        cx, cy = x(lat), y(tuned)
        tip = f"shortlisted{' (picked)' if picked else ''}: {lat:.4g} ms, held-out {tuned:.2f} % after the short fine-tune" + (
            "" if bn is None else f" ({bn:.2f} % before)")
        body.append(titled(f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx + 6:.1f},{cy:.1f} {cx:.1f},{cy + 6:.1f} {cx - 6:.1f},{cy:.1f}" fill="#fff" stroke="{colour}" stroke-width="2"/>', tip))
    body += _front_marks(x, y, marks)
    if show_budget:
        body.append(f'<line x1="{x(budget):.1f}" x2="{x(budget):.1f}" y1="{y.b:.1f}" y2="{y.a:.1f}" stroke="{RED}" stroke-dasharray="6 4" stroke-width="1.5"/>')
        body.append(text(x(budget) - 4, y.a - 6, f"budget {budget:.4g} ms", "end", fill=RED))
    elif budget is not None:
        body.append(text(x.b - 4, y.b + 12, f"budget {budget:.4g} ms: beyond the right edge →", "end", fill=RED))
    return svg(width, height, body, "search front per generation with the shortlist and the delivered model", "front-chart")


def _front_marks(x: Scale, y: Scale, marks: dict) -> list[str]:
    out = []
    pick, final, base = marks["pick"], marks["final"], marks["base"]
    if pick and final:
        out.append(f'<line x1="{x(pick[0]):.1f}" y1="{y(pick[1]):.1f}" x2="{x(final[0]):.1f}" y2="{y(final[1]):.1f}" stroke="{ORANGE}" stroke-dasharray="4 3"/>')
    if pick:
        out.append(titled(f'<circle cx="{x(pick[0]):.1f}" cy="{y(pick[1]):.1f}" r="7" fill="none" stroke="{ORANGE}" stroke-width="2"/>',
                          f"the pick before its final fine-tune: {pick[0]:.4g} ms, proxy {pick[1]:.2f} %"))
    if base:
        bx, by = x(base[0]), y(base[1])
        out.append(titled(f'<rect x="{bx - 5:.1f}" y="{by - 5:.1f}" width="10" height="10" fill="#111827"/>', f"unpruned: {base[0]:.4g} ms, test {base[1]:.2f} %"))
        near = final is not None and abs(x(final[0]) - bx) < 40 and abs(y(final[1]) - by) < 20
        label = f"unpruned: test {base[1]:.2f} %"
        out.append(text(bx + 10, by + 24, label, "end") if near else text(bx - 9, by - 8, label, "end"))
    if final:
        fx, fy = x(final[0]), y(final[1])
        out.append(titled(f'<polygon points="{star(fx, fy, 10)}" fill="{ORANGE}" stroke="#7c2d12"/>', f"delivered: {final[0]:.4g} ms, test {final[1]:.2f} %"))
        anchor, dx = ("end", -14) if fx > (x.a + x.b) / 2 else ("start", 14)
        label = f"delivered model: {final[1]:.2f} % test accuracy after fine-tune"
        out.append(text(fx + dx, fy + 4, label, anchor, size=12, fill="#7c2d12", extra=' id="pick-final" font-weight="bold"'))
    return out


def _front(r: dict) -> str:
    fronts = _fronts(r)
    legend = [
        f'<li><span class="sw" style="background:linear-gradient(90deg,#c7d2fe,#1e3a8a)"></span>the front after each of {len(fronts)} '
        "generation(s), light to dark: <b>proxy</b> accuracy (held-out TRAIN images after BatchNorm recalibration, before any "
        "fine-tune) against measured median latency</li>",
        f'<li><span class="sw dia" style="border-color:{PURPLE}"></span>the shortlist after its short fine-tune (held-out), '
        f'dotted down to its proxy; <span style="color:{ORANGE}">orange</span>: the one picked</li>',
        f'<li><span class="sw ring" style="border-color:{ORANGE}"></span>the pick as delivered (widened), its proxy before the final fine-tune</li>',
        f'<li><span class="sw" style="background:{ORANGE}"></span>★ the delivered model: <b>test</b> accuracy after the final '
        "fine-tune, latency of model.onnx</li>",
        '<li><span class="sw" style="background:#111827"></span>■ the unpruned model: test accuracy</li>',
    ]
    note = ("Proxy accuracies rank candidates against each other; they are not what the model scores once fine-tuned. "
            "Compare the star, not the front, with the unpruned model.")
    return (f'<section id="front"><h2>Search front per generation</h2>{_front_chart(r)}<ul class=legend>{"".join(legend)}</ul>'
            f"<p class=note>{esc(note)}</p></section>")


def _layers(r: dict) -> str:
    """Per-layer widths and latency before/after (report.json per_layer), or the widths alone."""
    rows = [_d(row) for row in _l(r.get("per_layer"))]
    if rows:
        widths = [(str(row.get("layer", "?")), num(row.get("out_before")), num(row.get("out_after"))) for row in rows]
        times = [(str(row.get("layer", "?")), num(row.get("ms_before")), num(row.get("ms_after"))) for row in rows]
        timing = paired_bars(times, "ms", "per-layer latency before and after", "layer-ms-chart", fmt=ms)
        note = ("Measured node times: ONNX Runtime's per-node profile of each model, charged to its Conv/Linear layers; a "
                "layer's ms is its share of the profiled run times the measured median. Grey: unpruned, blue: pruned.")
    else:
        after = _d(_d(r.get("pruned")).get("widths"))
        widths = [(str(k), None, num(v)) for k, v in after.items()]
        timing = "<p class=note>No per-layer latency: this target's backend has no per-node profile.</p>"
        note = "Widths after pruning; the unpruned widths are recorded with the per-layer profile only, which this backend lacks."
    width_chart = paired_bars(widths, "output channels", "per-layer widths before and after", "layer-width-chart", fmt=lambda v: f"{v:.0f}")
    return (f'<section id="layers"><h2>Per layer</h2><div class=grid><div><h3>Output channels</h3>{width_chart}</div>'
            f"<div><h3>Latency</h3>{timing}</div></div><p class=note>{esc(note)}</p></section>")


def _latency(r: dict, manifest: dict | None) -> str:
    """Latency distribution of every measured model as boxes from the recorded statistics."""
    rows = [("unpruned", _d(_d(r.get("baseline")).get("latency_ms")), GREY), ("pruned", _d(_d(r.get("pruned")).get("latency_ms")), BLUE)]
    int8 = _int8(manifest)
    if int8 and _d(int8.get("latency_ms")):
        rows.append(("INT8" if int8.get("accepted") else "INT8 (refused)", _d(int8.get("latency_ms")), PURPLE))
    chart = stat_boxes(rows, num(r.get("budget_ms")), "latency distribution of the unpruned and the pruned model", "latency-chart")
    head = ["model", "runs", "median", "p90", "p99", "mean", "std", "CV"]
    body = [[esc(name), esc(count(s.get("n"))), *(esc(ms(s.get(k))) for k in ("median", "p90", "p99", "mean", "std")),
             esc("–" if num(s.get("cv")) is None else f"{s['cv']:.3f}")] for name, s, _ in rows]
    note = ("report.json records summary statistics of the timed runs (median, p90, p99, mean and standard deviation over "
            "n runs), not every run, so these are not quartile boxes: each box spans median to p90, the whisker p90 to p99, "
            "the thick line is the median, the dot the mean and the thin line below it mean ± one standard deviation. "
            "Latencies in ms; the pruned models were timed next to the unpruned one and are reported in its units.")
    return f'<section id="latency"><h2>Latency distribution</h2>{chart}{_table([esc(h) for h in head], body, "num")}<p class=note>{esc(note)}</p></section>'


def _search(r: dict) -> str:
    s = _d(r.get("search"))
    facts = [
        ("strategy", f"{s.get('strategy', '?')} ({s.get('encoding', '?')} encoding), objectives {', '.join(map(str, _l(s.get('objectives')))) or '?'}"),
        ("size", f"population {s.get('population', '?')}, {s.get('generations', '?')} generation(s), {s.get('rounds', 1)} round(s), seed {s.get('seed', '?')}"),
        ("networks", f"{count(s.get('evaluations'))} evaluated, {count(s.get('latency_measurements'))} latency measurements, "
                     f"{count(s.get('cache_hits'))} cache hits, {count(s.get('surrogate_skips'))} skipped by the surrogate"),
        ("time", f"search {count(s.get('wall_s'))} s, whole run {count(_d(r.get('phases')).get('total_s'))} s"),
    ]
    workers = _d(s.get("workers"))
    if workers.get("kind") == "ray":
        facts.append(("scored on", f"Ray cluster {workers.get('address', '?')}: {count(workers.get('nodes'))} node(s), {count(workers.get('cpus'))} CPUs"))
    farm = _d(s.get("farm"))
    if farm:
        agents = [_d(a) for a in _l(farm.get("agents"))]
        used = ", ".join(f"{a.get('url', '?')} ({count(a.get('measurements'))})" for a in agents)
        removed = "; ".join(f"{_d(e).get('agent', '?')} taken out: {_d(e).get('reason', '?')}" for e in _l(farm.get("removed")))
        left = "; ".join(f"{_d(e).get('agent', '?')} left out: {_d(e).get('reason', '?')}" for e in _l(farm.get("left_out")))
        facts.append(("timed on", f"a farm of {len(agents)} agent(s), measurements each: {used}" + "".join(f"; {x}" for x in (removed, left) if x)))
    return "<section id=search><h2>Search</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl></section>"


def _hardware_notes(r: dict, manifest: dict | None) -> list[str]:
    """What was measured where, and what of it has not been run on real hardware."""
    profile, fp = _d(r.get("profile")), _d(r.get("fingerprint"))
    backend, agent = profile.get("backend", "?"), profile.get("agent")
    where = f"on the device behind the agent {agent}" if agent else "on the machine that ran edgeprune"
    runtime = " ".join(str(fp.get(k, "")) for k in ("runtime", "runtime_version", "provider", "precision")).strip()
    notes = [
        f"Latency: measured {where} with the {backend} backend ({runtime}); every latency on this page holds for "
        "this fingerprint only: another device, runtime version or thread count gives other numbers.",
        "Accuracy: measured on the machine that ran edgeprune (torch, and ONNX Runtime on its CPU for the ONNX files), "
        "not in the target's runtime.",
    ]
    if backend == "tensorrt":
        notes.append("TensorRT: edgeprune's TensorRT backend has not been run on hardware by its developers (tested against a "
                     "stand-in trtexec and recorded logs; README, \"What has not been run on hardware\"): check these numbers on the device.")
    engine = _d(_d(manifest).get("models")).get("engine")
    notes.append("A TensorRT engine was built; it runs only on the GPU and TensorRT version that built it." if engine
                 else "No TensorRT engine is part of this folder.")
    if _int8(manifest):
        notes.append("INT8: measured in ONNX Runtime on the CPU; INT8 has not been run through TensorRT.")
    if not _l(r.get("per_layer")):
        notes.append("Per-layer latency: not measured (the backend has no per-node profile).")
    return notes


def _device(r: dict, manifest: dict | None) -> str:
    fp = _d(r.get("fingerprint"))
    rows = [[esc(k), esc(v if isinstance(v, (str, int, float)) or v is None else str(v))] for k, v in fp.items()]
    profile = _d(r.get("profile"))
    shown = {k: profile.get(k) for k in ("name", "description", "backend", "provider", "precision", "batch", "channel_step", "agent")}
    rows += [[esc(f"profile {k}"), esc(v)] for k, v in shown.items() if v is not None]
    notes = "".join(f"<li>{esc(n)}</li>" for n in _hardware_notes(r, manifest))
    return (f'<section id="device"><h2>Device and what was not run on hardware</h2><div class=grid><div>{_table(["", "value"], rows)}</div>'
            f"<div><ul class=facts>{notes}</ul></div></div></section>")


def _disk_check(folder: Path, name: object, sha256: object) -> tuple[str, str]:
    """(text, css class) comparing a file on disk with its manifest hash."""
    path = inside(folder, name)
    if path is None:
        absent = plain_name(name) and not (folder / name).exists() and not (folder / name).is_symlink()
        return ("missing" if absent else "not a file inside this folder"), "bad"
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return ("matches", "ok") if digest == sha256 else ("differs: changed after the manifest was written", "bad")


def _link(folder: Path, name: object) -> str:
    """A relative link to ``name`` when it is a file inside ``folder``, else the name as text."""
    if inside(folder, name) is None:
        return esc(name)
    return f'<a href="{esc(quote(str(name)))}">{esc(name)}</a>'


def _artifacts(r: dict, manifest: dict | None, folder: Path) -> str:
    entries = [_d(a) for a in _l(_d(manifest).get("artifacts"))]
    if entries:
        rows = []
        for a in entries:
            state, css = _disk_check(folder, a.get("file"), a.get("sha256"))
            rows.append([_link(folder, a.get("file")), esc(a.get("role", "")), esc(size(a.get("bytes"))),
                         f"<code>{esc(a.get('sha256', '–'))}</code>", f'<span class="{css}">{esc(state)}</span>'])
        table = _table(["file", "role", "size", "sha256 (manifest.json)", "on disk when this page was written"], rows, "files")
        intro = f"Every file the folder hands over, pinned by sha256 in {_link(folder, MANIFEST_JSON)}; this page itself is derived from them and not in the manifest."
        listed = num(_d(manifest).get("files_listed")) or 0
        if listed > len(entries):
            intro += f" The manifest lists {int(listed):,} files, far more than edgeprune writes: only the first {len(entries)} are shown."
    else:
        names = [n for n in _d(r.get("artifacts")).values() if isinstance(n, str)]
        table = _table(["file"], [[_link(folder, n)] for n in names])
        intro = "This folder has no manifest.json, so no file is pinned by a hash."
    return f'<section id="artifacts"><h2>Files</h2><p>{intro}</p>{table}</section>'


STYLE = """
:root{color-scheme:light}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;
background:#f6f7f9;margin:0}main{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:24px;margin:0 0 6px}h1 .sub{font-weight:400;color:#6b7280}h2{font-size:18px;margin:0 0 10px}
h3{font-size:14px;margin:4px 0}section,header{background:#fff;border:1px solid #e5e7eb;border-radius:8px;
padding:16px 20px;margin:0 0 16px}.verdict{display:inline-block;padding:4px 10px;border-radius:6px;font-weight:600;margin:4px 0}
.ok{color:#166534}.bad{color:#991b1b}.verdict.ok{background:#dcfce7}.verdict.bad{background:#fee2e2}
.warn{background:#fef3c7;padding:6px 10px;border-radius:6px}.note,.meta{color:#4b5563;font-size:13px}
.lede{font-size:15px}nav a{margin:0 2px}table{border-collapse:collapse;margin:6px 0}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left;vertical-align:top}
table.num td:not(:first-child),table.num th:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}svg.chart{max-width:100%;height:auto;display:block}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
ul.legend{list-style:none;padding:0;margin:8px 0;font-size:13px}ul.legend li{margin:2px 0}
.sw{display:inline-block;width:22px;height:10px;margin-right:8px;vertical-align:middle;border-radius:2px}
.sw.dia{width:9px;height:9px;border:2px solid;transform:rotate(45deg);margin:0 12px 0 6px;border-radius:0}
.sw.ring{width:10px;height:10px;border:2px solid;border-radius:50%;margin:0 10px 0 5px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}dt{color:#6b7280}dd{margin:0}
footer{color:#6b7280;font-size:12px;text-align:center}
tr.fail td{background:#fef2f2}tr.pass td{background:#f0fdf4}table.num td{white-space:nowrap}td .note{white-space:normal;font-size:12px}td svg.chart{max-width:none}
table.gate td:nth-child(-n+3),table.gate th:nth-child(-n+3){text-align:left}
.scroll{overflow-x:auto}
"""


def page(title: str, body: str) -> str:
    """A whole self-contained document: ``body`` is markup built with :func:`esc`."""
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>\n"
    )


def render_report(report: dict, manifest: dict | None, folder: Path, report_sha256: str = "") -> str:
    """The page for one output folder (``folder`` is where links point and files are checked)."""
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    footer = (f"<footer>Written {esc(written)} by edgeprune from {_link(folder, REPORT_JSON)}"
              f"{' (sha256 ' + esc(report_sha256[:16]) + '…)' if report_sha256 else ''}; rebuild it with "
              "<code>edgeprune report OUT_DIR</code>.</footer>")
    body = "".join([
        _header(report, manifest), _compare(report, manifest), _front(report), _layers(report),
        _latency(report, manifest), _search(report), _device(report, manifest), _artifacts(report, manifest, folder), footer,
    ])
    title = f"edgeprune · {_d(report.get('model')).get('spec', 'model')} on {report.get('target', '?')}"
    return page(title, body)
