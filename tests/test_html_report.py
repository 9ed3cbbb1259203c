"""report.html and the gate's page: what they show, that nothing in them can run or load, that bad
folders are one-line errors, and that they render in a real browser with the network off.

The browser tests run Debian's chromium headless (tools/setup.sh installs it) and are skipped
only where it is missing. Their screenshots land in $EDGEPRUNE_TEST_ARTIFACTS when CI sets it
(kept as a CI artifact), else in the test's tmp_path; the path is printed either way.
"""

import base64
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import TinyCNN
from torch_block import BLOCK_TORCH

from edgeprune.cli import main
from edgeprune.report.html import CSP, write_report_html

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def folder(tiny_prune, tmp_path):
    """A copy of the session's finished prune output (tiny_prune.out itself is never changed)."""
    return Path(shutil.copytree(tiny_prune.out, tmp_path / "out"))


def _edit_report(folder: Path, change) -> dict:
    report = json.loads((folder / "report.json").read_text())
    change(report)
    (folder / "report.json").write_text(json.dumps(report))
    return report


def _attrs(page: str, name: str) -> list[str]:
    return re.findall(rf'\b{name}="([^"]*)"', page)


# --- the page written by prune and by `edgeprune report` ---------------------------------------


def test_prune_writes_report_html_and_names_it_at_the_end(tiny_prune):
    """Every prune output folder has the page, and the run's last lines say where it is."""
    page = tiny_prune.out / "report.html"
    assert page.is_file()
    assert f"report: {page}" in [line.rstrip() for line in tiny_prune.stderr.splitlines()]
    accuracy = f"{100 * tiny_prune.report['pruned']['accuracy']:.2f} %"
    assert accuracy in page.read_text()


def test_summary_fits_100_columns_and_keeps_the_path_whole(tiny_prune, tmp_path):
    """On a 200-column terminal the summary still wraps at 100 (the drift note of this run is
    longer than that), while a path longer than 100 characters stays on one unbroken line."""
    from rich.console import Console

    from edgeprune.report.summary import print_summary

    deep = tmp_path / ("a-long-folder-name-" * 6) / "out"
    shutil.copytree(tiny_prune.out, deep)
    assert len(str(deep / "report.html")) > 100
    report = json.loads((deep / "report.json").read_text())
    report["budget_kind"] = "absolute"  # whose drift note is a warning, longer than 100 columns
    report["drift"] = report["drift"] or {}
    report["drift"] |= {"anchor_ms": 1.0, "sessions": 9, "first_ms": 1.0, "last_ms": 1.5, "first_factor": 1.0, "last_factor": 1.5}
    buffer = io.StringIO()
    print_summary(report, deep, out=Console(file=buffer, width=200, color_system=None))
    lines = buffer.getvalue().splitlines()
    path_line = f"report: {deep / 'report.html'}"
    assert path_line in lines
    assert all(len(line) <= 100 for line in lines if line != path_line), max(lines, key=len)
    assert any("warning" in line for line in lines) and any("test accuracy" in line for line in lines)


def test_report_command_rebuilds_the_page_from_the_folder(folder, capsys):
    """`edgeprune report OUT_DIR` writes the page from report.json and manifest.json alone: the
    before/after numbers, one front per generation, every shortlisted candidate, per-layer bars
    for every layer, the fingerprint and every file with its sha256, all checked on disk."""
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert str(folder / "report.html") in capsys.readouterr().out
    page = (folder / "report.html").read_text()
    report = json.loads((folder / "report.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    pruned, base = report["pruned"], report["baseline"]
    for value in (pruned["latency_ms"]["median"], pruned["latency_ms"]["p90"], pruned["latency_ms"]["p99"], base["latency_ms"]["median"]):
        assert f"{value:.4f}" in page
    assert f"{pruned['macs']:,}" in page and f"{pruned['params']:,}" in page
    fronts = [h for h in report["search"]["history"] if h["pareto"]]
    assert page.count("<polyline") == len(fronts) >= 2
    shortlisted = sum(len(r["short_tune"]) for r in report["rounds"])
    assert page.count("<title>shortlisted") == shortlisted >= 2
    for row in report["per_layer"]:
        assert f"{row['layer']} after: {row['out_after']:.0f} output channels" in page
    assert report["export"]["fingerprint_hash"] in page and report["fingerprint"]["runtime_version"] in page
    for entry in manifest["artifacts"]:
        assert entry["sha256"] in page and f'href="{entry["file"]}"' in page
    assert page.count(">matches<") == len(manifest["artifacts"])
    assert "median, p90, p99, mean and standard deviation" in page  # the boxes say what they are drawn from


def test_page_marks_proxy_accuracy_apart_from_the_delivered_accuracy(folder):
    """The front's accuracies are the proxy; the star is the delivered model's test accuracy after
    its fine-tune, labelled with its number, at model.onnx's measured latency."""
    page = write_report_html(folder).read_text()
    report = json.loads((folder / "report.json").read_text())
    final = f"{100 * report['pruned']['accuracy']:.2f} %"
    label = re.search(r'<text [^>]*id="pick-final"[^>]*>([^<]*)</text>', page)
    assert label and final in label.group(1) and "test accuracy after fine-tune" in label.group(1)
    assert f"delivered: {report['pruned']['latency_ms']['median']:.4g} ms, test {final}" in page
    assert "<b>proxy</b> accuracy" in page and "the pick before its final fine-tune" in page
    assert f'<b id="final-accuracy">{final}</b>' in page


def test_a_demo_sized_run_gives_a_small_page(folder):
    """The demo (mobilenet_v2: 53 layers, 16 x 8 search) must give a page far under the 5 MB an
    output folder's page may weigh: every layer and generation drawn, nothing embedded."""

    def grow(r):
        row = r["per_layer"][0]
        r["per_layer"] = [row | {"layer": f"features.{i}.conv.0"} for i in range(53)]
        point = r["search"]["history"][0]["pareto"][0]
        r["search"]["history"] = [
            {"round": 1, "generation": g, "pareto": [point | {"latency_ms": 0.01 * (k + 1)} for k in range(16)]} for g in range(1, 9)
        ]

    _edit_report(folder, grow)
    page = write_report_html(folder)
    text = page.read_text()
    assert page.stat().st_size < 500_000
    assert all(f"features.{i}.conv.0 after:" in text for i in range(53)) and text.count("<polyline") == 8


def test_changed_file_is_flagged_against_the_manifest(folder):
    """A file edited after the manifest was written is shown as differing, not as vouched for."""
    (folder / "plan.json").write_text((folder / "plan.json").read_text() + " ")
    page = write_report_html(folder).read_text()
    assert page.count("differs: changed after the manifest was written") == 1


def test_report_open_hands_the_file_uri_to_the_browser(folder, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda uri: opened.append(uri) or True)
    assert main(["report", str(folder), "--open"]) == 0
    assert opened == [(folder / "report.html").resolve().as_uri()]


def test_report_runs_without_torch(folder):
    """A CI runner or a firmware team's machine has the folder, not torch."""
    script = BLOCK_TORCH + textwrap.dedent(
        f"""
        from edgeprune.cli import main
        code = main(["report", {str(folder)!r}])
        print("RESULT", code, "torch" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "RESULT 0 False" in done.stdout, done.stderr[-2000:]


# --- hostile and bad folders -------------------------------------------------------------------


def test_strings_from_a_foreign_report_are_escaped_and_links_stay_inside(folder):
    """report.json and manifest.json may be someone else's: markup in any string is shown as text,
    and a file the manifest names outside the folder (a path or a link out) is never linked."""

    def poison(r):
        r["model"]["spec"] = HOSTILE
        r["target"] = '"><img src=x onerror=alert(1)>'
        r["fingerprint"]["cpu"] = HOSTILE
        r["per_layer"][0]["layer"] = "<svg onload=alert(1)>"

    _edit_report(folder, poison)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder.parent / "outside.onnx").write_bytes(b"not yours")
    (folder / "escape.onnx").symlink_to(folder.parent / "outside.onnx")
    manifest["artifacts"] += [
        {"file": "../../etc/passwd", "role": HOSTILE, "sha256": "0" * 64, "bytes": 1},
        {"file": "escape.onnx", "role": "onnx", "sha256": "0" * 64, "bytes": 1},
    ]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    page = write_report_html(folder).read_text()
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "&lt;svg onload=alert(1)&gt;" in page
    hrefs = _attrs(page, "href")
    assert all(h.startswith("#") or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", h) for h in hrefs), hrefs
    assert "escape.onnx" not in hrefs and "../../etc/passwd" in page  # named, not linked
    assert page.count("not a file inside this folder") == 2
    assert f'content="{CSP}"' in page and "default-src 'none'" in CSP  # nothing may run or load


def test_page_loads_nothing_from_anywhere(folder):
    """Self-contained: no src attribute, no stylesheet link, no URL but the SVG namespace."""
    page = write_report_html(folder).read_text()
    assert not _attrs(page, "src") and "<link" not in page and "@import" not in page and "url(" not in page
    assert set(re.findall(r"https?://[^\"'\s<>]+", page)) == {"http://www.w3.org/2000/svg"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "not found"),
        ("no-report", "has no report.json"),
        ("bad-json", "is not valid JSON"),
        ("list", "is not a JSON object"),
        ("not-a-report", "is not a report edgeprune writes"),
        ("link-out", "has no report.json (or it links outside the folder)"),
    ],
)
def test_bad_folder_is_one_line_error_exit_2(case, message, tmp_path, capsys):
    out = tmp_path / "out"
    if case != "missing":
        out.mkdir()
    contents = {"bad-json": "{not json", "list": "[1, 2]", "not-a-report": "{}"}
    if case in contents:
        (out / "report.json").write_text(contents[case])
    if case == "link-out":
        (tmp_path / "elsewhere.json").write_text("{}")
        (out / "report.json").symlink_to(tmp_path / "elsewhere.json")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeprune: error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert not (out / "report.html").exists()


def test_unreadable_manifest_is_one_line_error_and_keeps_the_old_page(folder, capsys):
    before = (folder / "report.html").read_bytes()
    (folder / "manifest.json").write_text("{")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert (folder / "report.html").read_bytes() == before


def test_unwritable_folder_is_one_line_error(folder, monkeypatch, capsys):
    """A read-only shared drive: the reason and the way out, not a traceback."""
    import edgeprune.report.html as page

    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(page, "atomic_write", refuse)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err and "copy the folder" in err and len(err.strip().splitlines()) == 1


# --- pareto.png ---------------------------------------------------------------------------------


def _capture_figure(monkeypatch):
    import edgeprune.report.summary as report

    figures = []
    monkeypatch.setattr(report.plt, "close", lambda fig: figures.append(fig))
    return figures


def _candidate(latency: float, accuracy: float):
    return SimpleNamespace(latency=SimpleNamespace(median_ms=latency), accuracy=accuracy)


def test_pareto_png_labels_proxies_and_marks_the_delivered_accuracy(tmp_path, monkeypatch):
    """The plot's pick sits at its proxy (20 %); the delivered model's 86 % is drawn and named."""
    from edgeprune.report.summary import plot_pareto

    figures = _capture_figure(monkeypatch)
    front = [_candidate(0.3, 0.15), _candidate(0.45, 0.2)]
    args = (tmp_path / "p.png", front, front, 0.5, _candidate(1.0, 0.3), front[1], "t")
    plot_pareto(*args, final=(0.47, 0.86), baseline_test=0.9)
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "delivered · test 86.00% after fine-tune" in labels and "unpruned · test 90.00%" in labels
    assert {"evaluated (2) · proxy", "Pareto front within budget · proxy", "pick before its fine-tune · proxy"} <= set(labels)
    assert "proxy" in figures[0].axes[0].get_ylabel()
    plot_pareto(*args)  # without the final numbers it says where they are
    assert any("report.html" in t.get_text() for t in figures[1].axes[0].texts)
    assert (tmp_path / "p.png").stat().st_size > 10_000


# --- the gate's page ----------------------------------------------------------------------------


def _gate_results():
    """Two judged models as `edgeprune gate` makes them (one over budget), without timing any."""
    from edgeprune.jobs.gate import Budget, GateResult

    def result(model, measured, budget):
        b = Budget(model, Path(model), "fast-cpu", 90, budget, 0.05, model, profile=SimpleNamespace(name="fast-cpu"))
        stats = {"median": measured * 0.9, "p90": measured, "p99": measured * 1.2}
        return GateResult(b, measured, measured <= budget, "measured", [measured], stats, "48df124eaba8713f", 0.1)

    return [result("out/model.onnx", 0.094, 0.12), result(f"out/{HOSTILE}.onnx", 0.131, 0.10)]


def test_gate_html_is_written_with_each_model_red_or_green(tmp_path, capsys):
    """`gate --html FILE`: one row per model with budget, measured value and verdict, from a real
    gate run; a model name from the budgets file is shown as text."""
    from edgeprune.exporters.onnx import export_onnx

    blob = export_onnx(TinyCNN().eval(), (1, 1, 8, 8), 17)
    (tmp_path / "fast.onnx").write_bytes(blob)
    (tmp_path / "<b>slow.onnx").write_bytes(blob)
    (tmp_path / "fast-cpu.yaml").write_bytes(Path(PROFILE).read_bytes())
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        "- model: fast.onnx\n  target: fast-cpu.yaml\n  budget_ms: 10000\n"
        "- model: '<b>slow.onnx'\n  target: fast-cpu.yaml\n  budget_ms: 0.00001\n"
    )
    page_path = tmp_path / "ci" / "gate.html"
    assert main(["gate", "--budgets", str(budgets), "--html", str(page_path), "--no-cache", "--no-progress"]) == 1
    page = page_path.read_text()
    rows = re.findall(r'<tr class="(pass|fail)">(.*?)</tr>', page)
    assert [cls for cls, _ in rows] == ["pass", "fail"]
    assert "fast.onnx" in rows[0][1] and "PASS" in rows[0][1] and "10000.0000" in rows[0][1]
    assert "&lt;b&gt;slow.onnx" in rows[1][1] and "FAIL" in rows[1][1] and "<b>slow" not in page
    assert "FAIL: 1 of 2 over budget" in page and f'content="{CSP}"' in page


def test_gate_html_to_a_folder_is_refused_before_measuring(tmp_path, capsys):
    assert main(["gate", "m.onnx", "--budget-ms", "1", "--html", str(tmp_path)]) == 2
    assert "--html" in capsys.readouterr().err


# --- in a real browser --------------------------------------------------------------------------

# Runs after the page has loaded: every chart's size as laid out, the pick's label, the time it took.
PROBE = (
    'addEventListener("load",()=>{const box=e=>{const b=e.getBBox();return [b.width,b.height]};'
    'const charts=[...document.querySelectorAll("svg.chart")].map(s=>({id:s.id,children:s.childElementCount,box:box(s)}));'
    'const pick=document.getElementById("pick-final");'
    'const r={charts,pick:pick?{text:pick.textContent,box:box(pick)}:null,load_ms:performance.now(),'
    'elements:document.getElementsByTagName("*").length};'
    'document.documentElement.setAttribute("data-probe",JSON.stringify(r));console.log("edgeprune-probe")});'
)


def _browser(page: Path, tmp_path: Path, screenshot: str, height: int) -> tuple[dict, list[str], Path]:
    """Open ``page`` (with the probe allowed by a hash added to its own CSP) in headless chromium
    with the network off; returns the probe's findings, the console lines and the screenshot."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (tools/setup.sh installs it)")
    html_text = page.read_text()
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    assert f'content="{CSP}"' in html_text
    probed = html_text.replace(f'content="{CSP}"', f"content=\"{CSP}; script-src 'sha256-{digest}'\"").replace(
        "</body>", f"<script>{PROBE}</script></body>")
    probe_page = page.with_name(".probe-" + page.name)
    probe_page.write_text(probed)
    shots = Path(os.environ.get("EDGEPRUNE_TEST_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / screenshot
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars", f"--window-size=1280,{height}", f"--screenshot={shot}",
         "--dump-dom", probe_page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    print(f"browser screenshot: {shot}")
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, done.stderr[-3000:]
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return probe, console, shot


def _not_blank(shot: Path) -> int:
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(shot)[..., :3].reshape(-1, 3)[::13]
    return len(np.unique((pixels * 255).astype(int), axis=0))


def test_report_renders_in_a_headless_browser_offline(folder, tmp_path):
    """No console message but the probe's own (a blocked load or script would be one), every
    chart laid out with content, the pick's final accuracy on screen, a page light enough to open
    at once."""
    page = write_report_html(folder)
    probe, console, shot = _browser(page, tmp_path, "report-screenshot.png", 2400)
    assert len(console) == 1 and "edgeprune-probe" in console[0], console
    charts = {c["id"]: c for c in probe["charts"]}
    assert set(charts) == {"front-chart", "layer-width-chart", "layer-ms-chart", "latency-chart"}
    assert all(c["children"] > 5 and min(c["box"]) > 50 for c in charts.values()), charts
    final = f"{100 * json.loads((folder / 'report.json').read_text())['pruned']['accuracy']:.2f} %"
    assert probe["pick"] and final in probe["pick"]["text"] and min(probe["pick"]["box"]) > 5
    # Opens fast, by what opening costs rather than by a clock: the page is static HTML and SVG
    # with no script, so its open time is parsing and laying out its elements. Measured here
    # (chromium, busy 2-core VM), copies of this page's body opened at the load event in 70-90 ms
    # (544 elements, 30 kB), 125-180 ms (5.4k), 0.5-0.7 s (21k) and 1.5 s (86k, 4.3 MB). A tiny
    # model's page has about 550 elements; 2,000 keeps it near a tenth of a second, and a page
    # that renders every evaluation, or a table many times over, crosses it. (A 2 s bound on
    # load_ms, as before, was a bound on the machine: printed, never asserted.)
    size = page.stat().st_size
    print(f"report.html: {probe['elements']} elements, {size} bytes, load event at {probe['load_ms']:.0f} ms")
    assert probe["elements"] <= 2000 and size <= 200_000
    assert _not_blank(shot) > 30


def test_gate_page_renders_in_a_headless_browser(tmp_path):
    from edgeprune.jobs.gate import html_page

    page = tmp_path / "gate.html"
    page.write_bytes(html_page(_gate_results()))
    probe, console, shot = _browser(page, tmp_path, "gate-screenshot.png", 420)
    assert len(console) == 1 and "edgeprune-probe" in console[0], console
    assert len(probe["charts"]) == 2 and all(c["children"] == 3 and min(c["box"]) > 10 for c in probe["charts"])
    assert _not_blank(shot) > 10


def test_pareto_png_draws_robust_accuracy_where_robustness_was_an_objective(tmp_path, monkeypatch):
    from edgeprune.report.summary import plot_pareto

    figures = _capture_figure(monkeypatch)
    front = [_candidate(0.3, 0.15), _candidate(0.45, 0.2)]
    for c, robust in zip(front, (0.1, 0.12)):
        c.scores = {"robustness": robust}
    plot_pareto(tmp_path / "p.png", front, front, 0.5, _candidate(1.0, 0.3), front[1], "t",
                final=(0.47, 0.86), baseline_test=0.9, final_robust=0.55, baseline_robust=0.6)
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "Pareto front · robust accuracy on the shared adversarial set" in labels
    assert "delivered · test robust accuracy 55.00% (PGD)" in labels and "unpruned · test robust accuracy 60.00% (PGD)" in labels
