"""``edgeprune targets``: list the shipped target profiles, one line each."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    sub.add_parser("targets", help="list the target profiles")


def run(args: argparse.Namespace) -> int:
    from edgeprune.profiling.targets import list_profiles

    for profile in list_profiles():
        print(f"{profile.name:<20} step {profile.channel_step:<3} {profile.description}")
    return 0
