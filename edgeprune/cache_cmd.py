"""`edgeprune cache stats|clear|export|import`: look after the latency cache file.

A team measures on the device once and lets CI reuse the numbers: ``export`` writes plain,
versioned JSON (never a pickle or the SQLite file itself, whose format belongs to SQLite and
whose content we could not check), ``import`` checks every row before adding any.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.cache import LatencyCache, default_cache_path


def open_cache(path: str | None) -> LatencyCache:
    return LatencyCache(Path(path) if path else default_cache_path())


def fingerprint_summary(fp: dict[str, Any] | None) -> str:
    """One readable line for a fingerprint: target, device, runtime, threads, precision."""
    if fp is None:
        return "(details not recorded)"
    device = fp.get("device_model") or fp.get("gpu") or fp.get("cpu") or "unknown device"
    runtime = " ".join(str(fp[k]) for k in ("runtime", "runtime_version") if fp.get(k))
    parts = [str(fp.get("profile", "?")), str(device), runtime, str(fp.get("provider") or "")]
    if fp.get("intra_op_threads") is not None:
        threads = fp["intra_op_threads"]
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    parts += [str(fp[k]) for k in ("precision", "power_mode") if fp.get(k) is not None]
    if fp.get("opset") is not None:
        parts.append(f"opset {fp['opset']}")
    return " · ".join(p for p in parts if p)


def resolve_fingerprint(cache: LatencyCache, text: str) -> str:
    """A full fingerprint hash from a unique prefix of one in the cache (as git does)."""
    hashes = [r.hash for r in cache.fingerprint_rows()]
    matches = [h for h in hashes if h.startswith(text)] if len(text) >= 4 else [h for h in hashes if h == text]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(hashes) or "none"
        raise UserError(f"no fingerprint {text!r} in cache {cache.path} (it has: {known}); run `edgeprune cache stats`")
    raise UserError(f"fingerprint prefix {text!r} matches {len(matches)} fingerprints ({', '.join(matches)}); give more characters")


def cmd_stats(args) -> int:
    cache = open_cache(args.cache)
    try:
        groups = cache.fingerprint_rows()
        total = cache.count()
    finally:
        cache.close()
    if args.json:
        print(json.dumps({
            "cache": str(cache.path),
            "rows": total,
            "fingerprints": [
                {"hash": g.hash, "rows": g.rows, "newest": g.newest, "fingerprint": g.fingerprint} for g in groups
            ],
        }, indent=2))
        return 0
    print(f"{cache.path}: {total} rows, {len(groups)} fingerprint{'s' if len(groups) != 1 else ''}")
    for g in groups:
        newest = datetime.datetime.fromtimestamp(g.newest).strftime("%Y-%m-%d %H:%M")
        print(f"  {g.hash}  {g.rows:>6} rows  newest {newest}  {fingerprint_summary(g.fingerprint)}")
    return 0


def cmd_clear(args) -> int:
    if not args.all and args.fingerprint is None:
        raise UserError("cache clear needs --all or --fingerprint HASH (see `edgeprune cache stats`)")
    cache = open_cache(args.cache)
    try:
        fp = resolve_fingerprint(cache, args.fingerprint) if args.fingerprint is not None else None
        removed = cache.clear(fp)
    finally:
        cache.close()
    scope = f"fingerprint {fp}" if fp else "all fingerprints"
    print(f"removed {removed} row{'s' if removed != 1 else ''} ({scope}) from {cache.path}")
    return 0


def cmd_export(args) -> int:
    cache = open_cache(args.cache)
    try:
        fp = resolve_fingerprint(cache, args.fingerprint) if args.fingerprint is not None else None
        document = cache.export_rows(fp)
    finally:
        cache.close()
    out = Path(args.file)
    if out.is_dir():
        raise UserError(f"{out} is a folder; pass a file name such as {out / 'latency-cache.json'}")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or pass another FILE")
    # Temp file + rename: a reader (CI) never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    rows = len(document["rows"])
    print(f"exported {rows} row{'s' if rows != 1 else ''} ({len(document['fingerprints'])} fingerprints) to {out}")
    return 0


def cmd_import(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"cache import: {path} not found; pass a file written by `edgeprune cache export`")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cache import {path}: not JSON ({e}); pass a file written by `edgeprune cache export`") from None
    cache = open_cache(args.cache)
    try:
        added, skipped = cache.import_rows(document, str(path))
    finally:
        cache.close()
    print(f"imported {added} row{'s' if added != 1 else ''} into {cache.path}; {skipped} already there (kept the existing value)")
    return 0


COMMANDS = {"stats": cmd_stats, "clear": cmd_clear, "export": cmd_export, "import": cmd_import}


def add_parser(sub) -> None:
    """The `cache` sub-command and its actions, added to the top-level parser in cli.py."""
    c = sub.add_parser("cache", help="latency cache: stats | clear | export FILE | import FILE")
    actions = c.add_subparsers(dest="cache_action", metavar="ACTION", required=True)

    def with_cache(p):
        p.add_argument("--cache", help="latency cache SQLite file (default: in the user cache folder)")
        return p

    s = with_cache(actions.add_parser("stats", help="rows per device fingerprint"))
    s.add_argument("--json", action="store_true", help="print as JSON")
    cl = with_cache(actions.add_parser("clear", help="delete rows (prints what it removed, asks nothing)"))
    which = cl.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="delete every row")
    which.add_argument("--fingerprint", metavar="HASH", help="delete one fingerprint's rows (a unique prefix is enough)")
    e = with_cache(actions.add_parser("export", help="write the rows as versioned JSON with their fingerprints"))
    e.add_argument("file", help="JSON file to write")
    e.add_argument("--fingerprint", metavar="HASH", help="only this fingerprint's rows")
    i = with_cache(actions.add_parser("import", help="add rows from an exported JSON file (existing rows win)"))
    i.add_argument("file", help="JSON file written by `edgeprune cache export`")


def run(args) -> int:
    return COMMANDS[args.cache_action](args)
