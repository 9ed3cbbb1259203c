"""Command line: parse, validate, call. Bad input → one line on stderr and exit code 2.

``edgeprune --target x86-cpu model.pt ...`` (no sub-command) means ``edgeprune prune ...``.
``--debug`` anywhere shows the traceback instead of the one-line error.
Each verb is a module of :mod:`edgeprune.commands`.
"""

from __future__ import annotations

import argparse
import sys

from edgeprune import __version__
from edgeprune.commands import agent, cache, data, demo, ensemble, export, gate, profile, prune, report, targets, train
from edgeprune.errors import UserError
from edgeprune.progress import log_to_stderr

# In the order `edgeprune --help` lists them.
VERBS = {
    "prune": prune,
    "demo": demo,
    "train": train,
    "data": data,
    "profile": profile,
    "targets": targets,
    "agent": agent,
    "cache": cache,
    "export": export,
    "ensemble": ensemble,
    "report": report,
    "gate": gate,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeprune", description="Prune PyTorch CNNs for latency measured on the target device.")
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in VERBS.values():
        command.add_parser(sub)
    return parser


def _normalise_argv(argv: list[str]) -> tuple[list[str], bool]:
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    first = next((a for a in argv if not a.startswith("-")), None)
    if argv and first not in VERBS and not {"-h", "--help", "--version"} & set(argv):
        argv = ["prune", *argv]
    return argv, debug


def main(argv: list[str] | None = None) -> int:
    argv, debug = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    log_to_stderr()  # where a live progress bar cannot be drawn, its lines go to stderr
    try:
        return VERBS[args.command].run(args)
    except UserError as exc:
        if debug:
            raise
        print(f"edgeprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeprune: interrupted; no output folder was written (a prune can continue with --resume OUT_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
