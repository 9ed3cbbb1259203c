"""``edgeprune report OUT_DIR [--open]``: (re)build an output folder's report.html from its JSON.

Nothing is re-run or re-measured: the page is drawn from report.json and manifest.json, so it can
be rebuilt after ``edgeprune export`` rewrote them, or by someone who only has the folder. Torch
is never imported (the page module is stdlib-only), so this works on a CI runner too.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(re)build OUT_DIR/report.html from the folder's report.json and manifest.json, without re-running")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder written by `edgeprune prune` (or `edgeprune export`)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser afterwards")


def run(args: argparse.Namespace) -> int:
    """0 when the page was written; a folder without a readable report.json is bad input (exit 2)."""
    from edgeprune.report.html import write_report_html

    path = write_report_html(Path(args.out_dir))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if args.open:
        import webbrowser

        uri = path.resolve().as_uri()
        if not webbrowser.open(uri):
            print(f"no web browser found here; open {uri} in one")
    return 0
