"""`edgeprune cache stats|clear|export|import`: look after the latency cache file.

A team measures on the device once and lets CI reuse the numbers: ``export`` writes plain,
versioned JSON (never a pickle or the SQLite file itself, whose format belongs to SQLite and
whose content we could not check), ``import`` checks every row before adding any. ``gate`` trusts
the cache before measuring, so an imported file is untrusted input: it must be small, plain JSON,
every fingerprint must carry details that hash to it and every field must be in a real range.
``export`` therefore leaves out (with a note) rows an import would refuse, so a shared file
always imports.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from edgeprune.commands.args import add_cache_file
from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.profiling.cache import LatencyCache, default_cache_path
from edgeprune.profiling.cache_export import read_export


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
    """A full fingerprint hash from a unique prefix of one in the cache (as git does); every table
    counts, so a fingerprint with only node-time profiles left can still be cleared."""
    hashes = cache.fingerprint_hashes()
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
        total, profiles = cache.count(), cache.node_count()
    finally:
        cache.close()
    if args.json:
        print(json.dumps({
            "cache": str(cache.path),
            "rows": total,
            "node_time_profiles": profiles,
            "fingerprints": [
                {"hash": g.hash, "rows": g.rows, "newest": g.newest, "fingerprint": g.fingerprint} for g in groups
            ],
        }, indent=2))
        return 0
    print(f"{cache.path}: {total} rows, {len(groups)} fingerprint{'s' if len(groups) != 1 else ''}, "
          f"{profiles} node-time profile{'s' if profiles != 1 else ''}")
    for g in groups:
        print(f"  {g.hash}  {g.rows:>6} rows  newest {_date(g.newest)}  {fingerprint_summary(g.fingerprint)}")
    return 0


def _date(timestamp: float | None) -> str:
    """``YYYY-MM-DD HH:MM``, or ``unknown`` for a time no date can show: a file written by hand
    may hold ``created = 1e300``, and one such row must not make every later ``stats`` crash."""
    try:
        return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"


def cmd_clear(args) -> int:
    if not args.all and args.fingerprint is None:
        raise UserError("cache clear needs --all or --fingerprint HASH (see `edgeprune cache stats`)")
    cache = open_cache(args.cache)
    try:
        fp = resolve_fingerprint(cache, args.fingerprint) if args.fingerprint is not None else None
        removed, profiles = cache.clear(fp)
    finally:
        cache.close()
    scope = f"fingerprint {fp}" if fp else "all fingerprints"
    print(f"removed {removed} latency row{'s' if removed != 1 else ''} and {profiles} node-time "
          f"profile{'s' if profiles != 1 else ''} ({scope}) from {cache.path}")
    return 0


def cmd_export(args) -> int:
    """Write the rows an import will accept. Rows it would refuse (chiefly those whose device
    details were never recorded) are left out with a ``note:`` line each on stdout rather than
    exported: one of them would make every import of the shared file fail."""
    cache = open_cache(args.cache)
    try:
        fp = resolve_fingerprint(cache, args.fingerprint) if args.fingerprint is not None else None
        document, notes = cache.export_rows(fp)
    finally:
        cache.close()
    out = Path(args.file)
    if out.is_dir():
        raise UserError(f"{out} is a folder; pass a file name such as {out / 'latency-cache.json'}")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or pass another FILE")
    atomic_write(out, (json.dumps(document, indent=1) + "\n").encode("utf-8"))  # a reader (CI) never sees half a file
    for note in notes:
        print(f"note: {note}")
    rows = len(document["rows"])
    fps = len(document["fingerprints"])
    print(f"exported {rows} row{'s' if rows != 1 else ''} ({fps} fingerprint{'s' if fps != 1 else ''}) to {out}")
    return 0


def cmd_import(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"cache import: {path} not found; pass a file written by `edgeprune cache export`")
    document = read_export(path)  # size, encoding and JSON checked before the cache is opened
    cache = open_cache(args.cache)
    try:
        added, skipped = cache.import_rows(document, str(path))
    finally:
        cache.close()
    print(f"imported {added} row{'s' if added != 1 else ''} into {cache.path}; {skipped} already there (kept the existing value)")
    return 0


ACTIONS = {"stats": cmd_stats, "clear": cmd_clear, "export": cmd_export, "import": cmd_import}


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="latency cache: stats | clear | export FILE | import FILE")
    actions = c.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    s = actions.add_parser("stats", help="rows per device fingerprint")
    add_cache_file(s)
    s.add_argument("--json", action="store_true", help="print as JSON")
    cl = actions.add_parser("clear", help="delete rows (prints what it removed, asks nothing)")
    add_cache_file(cl)
    which = cl.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="delete every row")
    which.add_argument("--fingerprint", metavar="HASH", help="delete one fingerprint's rows (a unique prefix is enough)")
    e = actions.add_parser("export", help="write the rows as versioned JSON with their fingerprints")
    add_cache_file(e)
    e.add_argument("file", help="JSON file to write")
    e.add_argument("--fingerprint", metavar="HASH", help="only this fingerprint's rows")
    i = actions.add_parser("import", help="add rows from an exported JSON file (existing rows win)")
    add_cache_file(i)
    i.add_argument("file", help="JSON file written by `edgeprune cache export`")


def run(args) -> int:
    return ACTIONS[args.cache_action](args)
