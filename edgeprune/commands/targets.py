"""``edgeprune targets``: list the shipped target profiles, one line each.

``edgeprune targets probe TARGET`` measures the target's channel staircase and proposes its
``channel_step`` (:mod:`edgeprune.jobs.probe`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune.errors import UserError

KINDS = ("conv", "depthwise", "linear")  # edgeprune.jobs.probe.KINDS, named here so --help needs no torch


def add_parser(sub) -> None:
    t = sub.add_parser("targets", help="list the target profiles; `targets probe TARGET` measures a target's channel step")
    actions = t.add_subparsers(dest="targets_action", metavar="ACTION")
    p = actions.add_parser("probe", help="time a conv, a depthwise block and a linear layer over widths around 64 and propose the channel step")
    p.add_argument("target", help="target profile name or YAML path")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"layer kinds to probe, comma-separated (default {','.join(KINDS)}; one kind takes a third of the time)")
    p.add_argument("--rounds", type=int, default=1, help="time every width this many times, in passes, and keep the median ratio (default 1; 3 on a noisy machine)")
    p.add_argument("--json", metavar="PATH", help="also write the measured staircase and the proposed steps as JSON to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "targets_action", None) == "probe":
        return _probe(args)
    from edgeprune.profiling.targets import list_profiles

    for profile in list_profiles():
        print(f"{profile.name:<20} step {profile.channel_step:<3} {profile.description}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from edgeprune.profiling.targets import load_profile

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise UserError(f"--kinds {args.kinds!r}: name each of {', '.join(KINDS)} at most once, comma-separated")
    if not 1 <= args.rounds <= 20:
        raise UserError(f"--rounds must be from 1 to 20, got {args.rounds}")
    out = Path(args.json) if args.json else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--json {out}: folder {out.parent} does not exist")
    profile = load_profile(args.target)

    from edgeprune.files import atomic_write
    from edgeprune.jobs.probe import run_probe
    from edgeprune.jobs.probe_view import print_probe

    result = run_probe(profile, kinds, args.rounds, progress=not args.no_progress)
    print_probe(result)
    if out is not None:
        atomic_write(out, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return 0
