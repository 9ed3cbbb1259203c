"""Search checkpoints: an append-only journal of evaluations that makes a killed run resumable.

The GA itself is deterministic for a seed (pymoo draws from its own seeded generator), so the
state worth saving is not the algorithm's internals but the expensive part: every evaluated
candidate. A resumed run replays the search from the start with the same seed; each genome the
journal already holds is answered from it, so the replay reaches the point of the kill in
seconds and from there continues exactly as the uninterrupted run would have. Each evaluation is
flushed and fsynced as it completes: ``kill -9`` loses at most the evaluation in flight.

Files are JSON lines (never pickles): ``evaluations.jsonl`` (one candidate per line) and
``generations.jsonl`` (one per finished generation: counts, best, Pareto front, hypervolume).

Everything read back is checked against a small schema per record type before it is used: a
checkpoint is a file like any other (a disk fills, someone edits it), and a wrong value must stop
the resume with one line naming the file, the line and the fix, not a traceback from deep in the
search.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.untrusted import (
    ANY_OBJECT, BOOL, FRACTION, MAX_JSON_BYTES, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT,
    Malformed, is_int, is_number, items, json_object, loads, nullable, rule, show, values,
)
from edgeprune.records import Candidate, Choice, Group, GroupLayout
from edgeprune.profiling.stats import LatencyStats

# 2: run.json's config holds typed settings groups (edgeprune.jobs.settings); 1: release 0.1.0's
# flat text form, still read by --resume (edgeprune.commands.resume).
CHECKPOINT_FORMAT_VERSION = 2
CHECKPOINT_FORMATS = (1, CHECKPOINT_FORMAT_VERSION)


def _error(path: Path, root: Path, problem: str, line: int | None = None) -> UserError:
    where = f"checkpoint file {path}" + (f" line {line}" if line is not None else "")
    return UserError(f"{where}: {problem}; delete the checkpoint folder {root} and start again")


_CHANNELS = rule(
    lambda v: isinstance(v, list) and len(v) > 0 and all(is_int(i) and i >= 0 for i in v)
    and all(a < b for a, b in zip(v, v[1:])),
    "a non-empty ascending list of channel indices",
)


def _latency(median) -> typing.Callable:
    """LatencyStats.to_dict()'s shape. n is 0 for a screened (predicted) candidate."""
    times = {key: NONNEG for key in ("p90", "p99", "mean", "std", "cv")}
    return json_object({"n": NONNEG_INT, "median": median, **times}, {"noisy": BOOL})


_EVALUATION = json_object(
    {
        "choice": rule(lambda v: isinstance(v, list), "a list (one entry per channel group)"),
        "accuracy": FRACTION,
        "latency": _latency(NONNEG),
        "macs": NONNEG_INT,
        "params": NONNEG_INT,
        "from_cache": BOOL,
        "seconds": NONNEG,
    },
    {"predicted": BOOL, "floored": BOOL, "scores": values(rule(is_number, "a finite number")), "memory_mb": NONNEG},
)
_GENERATION = json_object(
    {
        "generation": POSITIVE_INT,
        "evaluations": NONNEG_INT,
        "best_accuracy": nullable(FRACTION),
        "best_latency_ms": nullable(NONNEG),
        "hypervolume": NONNEG,
        "pareto": items(json_object({"accuracy": FRACTION, "latency_ms": NONNEG, "macs": NONNEG_INT})),
        "wall_s": NONNEG,
    }
)
_VERSIONED = json_object({"format_version": rule(is_int, "a whole number")})
# The steady-state search's evaluations in flight (edgeprune.search.steady); bounded like a farm.
MAX_IN_FLIGHT = 256
_STREAM = json_object({"in_flight": rule(lambda v: is_int(v) and 1 <= v <= MAX_IN_FLIGHT, f"a whole number from 1 to {MAX_IN_FLIGHT}")})
# The anchor is the unit every latency of the run is scaled by: a zero would divide by zero.
_RUN = json_object({"config": ANY_OBJECT, "budget_ms": POSITIVE, "anchor": _latency(POSITIVE)})
_SUMMARY = json_object(
    {
        "round": POSITIVE_INT,
        "budget_ms": POSITIVE,
        "latency_ms": NONNEG,
        "holdout_accuracy": FRACTION,
        "holdout_accuracy_before_finetune": FRACTION,
        "macs": NONNEG_INT,
        "params": NONNEG_INT,
        "group_widths_round": items(POSITIVE_INT),
        "evaluations": NONNEG_INT,
        "search_s": NONNEG,
        "finetune_s": NONNEG,
        "finetune": ANY_OBJECT,
    }
)
_PLAN = json_object({"kept": values(_CHANNELS)})


# --- files ------------------------------------------------------------------------------------


def _parse(raw: bytes, path: Path, root: Path, line: int | None = None):
    """One JSON document, or a one-line UserError naming the file and the line."""
    try:
        return loads(raw)
    except Malformed as exc:
        raise _error(path, root, str(exc), line) from None


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path, root: Path) -> list[tuple[int, object]]:
    """``(line number, record)`` of a JSONL file.

    Bytes after the last newline are a write killed midway and are dropped, not an error; that
    is the only place a torn line can be (every record is written and fsynced whole, newline
    last), so a bad line anywhere else, or a bad last line that has its newline, is corruption."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    lines.pop()  # b"" after the last newline, or the torn write
    return [(number, _parse(line, path, root, number)) for number, line in enumerate(lines, 1)]


def _cut_torn_tail(path: Path) -> None:
    """Cut ``path`` back to just after its last newline, durably.

    A last line without its newline is a write killed midway. Reading skips it, but appending
    after it would glue the next record onto it: that record would be lost and, once more lines
    follow, the resume after that would find a corrupt line in the middle of the file."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return
    with f:
        end = keep = f.seek(0, os.SEEK_END)
        while keep > 0:
            start = max(0, keep - 65536)
            f.seek(start)
            at = f.read(keep - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            keep = start
        if keep < end:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def _stored_widths(item) -> int | None:
    """The width a stored group entry stands for (a width, or its kept indices), None if neither."""
    if is_int(item):
        return item
    return len(item) if isinstance(item, list) else None


class SearchJournal:
    """Evaluations and generations of one search, in a folder of the run's checkpoint.

    Opening a journal readies its files for appending (see :func:`_cut_torn_tail`)."""

    def __init__(self, folder: Path, space: GroupLayout):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.space = space
        self.root = self.folder.parent  # the run's OUT.checkpoint: what the user deletes
        self.evaluations_path = self.folder / "evaluations.jsonl"
        self.generations_path = self.folder / "generations.jsonl"
        self.stream_path = self.folder / "stream.json"
        _cut_torn_tail(self.evaluations_path)
        _cut_torn_tail(self.generations_path)

    # A choice is stored as a width when it is the width encoding's top-k, else as the index list:
    # mobilenet_v2 has ~17k channels, and the width encoding never needs the lists.
    def _encode_choice(self, choice: Choice) -> list:
        return [
            len(kept) if list(kept) == group.kept(len(kept)) else list(kept)
            for group, kept in zip(self.space.groups, choice)
        ]

    def _decode_choice(self, stored: list) -> Choice:
        groups = self.space.groups
        if len(stored) != len(groups):
            raise Malformed(
                f"choice is for {len(stored)} channel groups, the model has {len(groups)} (a checkpoint of another model or target step)"
            )
        return tuple(_decode_group(group, item, f"choice[{i}]") for i, (group, item) in enumerate(zip(groups, stored)))

    def record(self, cand: Candidate) -> None:
        _append(
            self.evaluations_path,
            {
                "choice": self._encode_choice(cand.choice),
                "accuracy": cand.accuracy,
                "latency": cand.latency.to_dict(),
                "macs": cand.macs,
                "params": cand.params,
                "from_cache": cand.from_cache,
                "seconds": cand.seconds,
                "predicted": cand.predicted,
                **({"floored": True} if cand.floored else {}),
                "scores": cand.scores,
                **({"memory_mb": cand.memory_mb} if cand.memory_mb is not None else {}),
            },
        )

    def _candidate(self, r) -> Candidate:
        _EVALUATION(r, "")
        return Candidate(
            choice=self._decode_choice(r["choice"]),
            accuracy=float(r["accuracy"]),
            latency=LatencyStats.from_dict(r["latency"]),
            macs=r["macs"],
            params=r["params"],
            from_cache=r["from_cache"],
            seconds=float(r["seconds"]),
            predicted=r.get("predicted", False),
            scores={k: float(v) for k, v in r.get("scores", {}).items()},
            memory_mb=float(r["memory_mb"]) if "memory_mb" in r else None,
            floored=r.get("floored", False),
        )

    def candidates(self) -> list[Candidate]:
        return _checked(self.evaluations_path, self.root, self._candidate)

    def record_generation(self, entry: dict) -> None:
        _append(self.generations_path, entry)

    def in_flight(self, capacity: int) -> int:
        """How many evaluations the steady-state search keeps in flight: the number the round's
        first run recorded, else ``capacity`` (then recorded). What it asks for depends on that
        number, so a resumed run replays its journal with the first run's, whatever the farm
        has now (more in flight than agents only queue, fewer would ask for other candidates)."""
        if self.stream_path.is_file():
            with open(self.stream_path, "rb") as f:
                raw = f.read(4097)
            if len(raw) > 4096:
                raise _error(self.stream_path, self.root, "larger than 4 KiB, far above what edgeprune writes")
            record = _parse(raw, self.stream_path, self.root)
            try:
                _STREAM(record, "")
            except Malformed as exc:
                raise _error(self.stream_path, self.root, str(exc)) from None
            return record["in_flight"]
        in_flight = max(1, min(int(capacity), MAX_IN_FLIGHT))
        _write_json_atomic(self.stream_path, {"in_flight": in_flight})
        return in_flight

    def generations(self) -> list[dict]:
        def check(record):
            _GENERATION(record, "")
            return record

        return _checked(self.generations_path, self.root, check)


def _checked(path: Path, root: Path, parse) -> list:
    """``parse`` of every record of a JSONL file; its Malformed becomes the file's one-line error."""
    out = []
    for number, record in _read_lines(path, root):
        try:
            out.append(parse(record))
        except Malformed as exc:
            raise _error(path, root, str(exc), number) from None
    return out


def _decode_group(group: Group, item, name: str) -> tuple[int, ...]:
    """One group's kept channels from its stored entry, checked against the group: a width on its
    grid (its most important channels) or ascending indices below its full width."""
    width = _stored_widths(item)
    if width is None or (isinstance(item, list) and not all(is_int(i) for i in item)):
        raise Malformed(f"{name} must be a width or a list of channel indices, got {show(item)}")
    if width not in group.options:
        raise Malformed(f"{name} keeps {width} channels of group {group.name}, not one of its widths {show(list(group.options))}")
    if isinstance(item, int):
        return tuple(group.kept(item))
    if item[0] < 0 or item[-1] >= group.full or any(a >= b for a, b in zip(item, item[1:])):
        raise Malformed(f"{name} must list ascending channel indices of group {group.name} from 0 to {group.full - 1}")
    return tuple(item)


def _fits(value, hint) -> bool:
    """Whether a JSON value can be a dataclass field annotated ``hint`` (the types the settings
    use: str, int, float, bool, tuple[float, ...] and ``X | None``). Other hints pass: a field
    of a type this does not know is left to the config's own checks rather than refused."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, h) for h in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
        return isinstance(value, list) and len(value) == len(args) and all(map(_fits, value, args))
    return True


class RunCheckpoint:
    """``OUT.checkpoint/``: what a killed ``prune`` needs to continue (``--resume OUT``).

    ``run.json`` holds the run's settings and the numbers fixed before the search (budget,
    baseline anchor), so a resumed run searches against exactly the same targets; each round has a
    :class:`SearchJournal` and, once finished, its plan, summary and fine-tuned weights.
    """

    def __init__(self, out: Path):
        out = Path(out)
        self.folder = out.parent / f"{out.name}.checkpoint"

    @property
    def run_path(self) -> Path:
        return self.folder / "run.json"

    def exists(self) -> bool:
        return self.run_path.is_file()

    def start(self, run: dict) -> None:
        """Begin a fresh checkpoint (an older one for the same output is discarded)."""
        self.clear()
        self.folder.mkdir(parents=True)
        _write_json_atomic(self.run_path, {"format_version": CHECKPOINT_FORMAT_VERSION, **run})

    def _check(self, path: Path, record, schema) -> dict:
        """``record`` if it follows ``schema``, else the one-line error naming ``path``."""
        try:
            schema(record, "")
        except Malformed as exc:
            raise _error(path, self.folder, str(exc)) from None
        return record

    def _read_json(self, path: Path, schema) -> dict:
        """A JSON file of the checkpoint, checked: a missing one is as broken as a wrong one."""
        if not path.is_file():
            raise _error(path, self.folder, "missing")
        with open(path, "rb") as f:  # at most the cap and one byte: a huge file is not read whole
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise _error(path, self.folder, f"larger than {MAX_JSON_BYTES >> 20} MiB, far above what edgeprune writes")
        return self._check(path, _parse(raw, path, self.folder), schema)

    def read_run(self) -> dict:
        """run.json, its shape checked: the settings (``config``), ``budget_ms`` and ``anchor``."""
        if not self.exists():
            raise UserError(
                f"no checkpoint to resume at {self.folder}; pass the --out folder of a run that was interrupted"
            )
        self._refuse_links()
        run = self._read_json(self.run_path, _VERSIONED)
        if run["format_version"] not in CHECKPOINT_FORMATS:
            raise UserError(
                f"checkpoint {self.folder} was written by another edgeprune version; delete it and start again"
            )
        return self._check(self.run_path, run, _RUN)

    def _refuse_links(self) -> None:
        """A resumed run appends to, truncates and replaces files in the checkpoint: a symbolic
        link placed there by whoever handed over the folder would aim those writes elsewhere."""
        for path in [self.folder, *self.folder.rglob("*")]:
            if path.is_symlink():
                raise UserError(
                    f"checkpoint {self.folder} holds a symbolic link ({path.relative_to(self.folder.parent)}); "
                    f"a checkpoint edgeprune wrote has none: delete {self.folder} and start again"
                )

    def read_config(self, config_class, skip: tuple[str, ...] = ("resume", "progress"), section: str | None = None) -> dict:
        """The run's settings (or those of the object ``section`` of them) as keyword arguments of
        the dataclass ``config_class``, each of the type its field declares (JSON lists become
        tuples), ``skip`` left out for the caller to pass. Unknown keys are ignored. Why: a wrong
        type would otherwise fail deep in the run (``"x" < 4``) with a traceback instead of one
        line naming the key."""
        config, where = self.read_run()["config"], "config"
        if section is not None:
            config, where = config.get(section, {}), f"config.{section}"
            if not isinstance(config, dict):
                raise _error(self.run_path, self.folder, f"{where} must be an object, got {show(config)}")
        hints = typing.get_type_hints(config_class)
        kwargs = {}
        for f in dataclasses.fields(config_class):
            if f.name in skip:
                continue
            if f.name not in config:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise _error(self.run_path, self.folder, f"{where} has no {f.name!r}")
                continue
            value, hint = config[f.name], hints[f.name]
            if not _fits(value, hint):
                what = str(hint) if typing.get_args(hint) else hint.__name__  # "float | None", "int"
                raise _error(self.run_path, self.folder, f"{where}.{f.name} must be of type {what}, got {show(value)}")
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return kwargs

    def round_folder(self, number: int) -> Path:
        return self.folder / f"round-{number}"

    def save_round(self, number: int, summary: dict, plan: dict, state_dict) -> None:
        import torch

        folder = self.round_folder(number)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, folder / "state_dict.pt")
        _write_json_atomic(folder / "plan.json", plan)
        _write_json_atomic(folder / "done.json", summary)  # written last: marks the round complete

    def finished_round(self, number: int, space: GroupLayout | None = None) -> tuple[dict, dict, Path] | None:
        """``(summary, plan, state_dict_path)`` of a completed round, else None.

        Checked so that rebuilding the round cannot fail on them: the shapes, the round number,
        that the weights are there and, given the original model's ``space`` (every round's plan
        is on the original model), the plan's groups and channel indices. The pick's widths are
        not checked against the journal: round 1 may pick the unpruned network, which is
        evaluated before the journal is opened."""
        folder = self.round_folder(number)
        if not (folder / "done.json").is_file():
            return None
        summary = self._read_json(folder / "done.json", _SUMMARY)
        if summary["round"] != number:
            raise _error(folder / "done.json", self.folder, f"round is {summary['round']}, not {number}")
        plan = self._read_json(folder / "plan.json", _PLAN)
        if space is not None:
            self._check_plan(folder / "plan.json", plan["kept"], space, plan.get("dropped", []))
        if not (folder / "state_dict.pt").is_file():
            raise _error(folder / "state_dict.pt", self.folder, "missing")
        return summary, plan, folder / "state_dict.pt"

    def _check_plan(self, path: Path, kept: dict, space: GroupLayout, dropped) -> None:
        """A round's plan is on the original model: the same groups, indices below their widths,
        dropped blocks among its depth groups (a plan lists them apart from ``kept``)."""
        full = {g.name: g.full for g in space.groups if not g.depth}
        blocks = {g.coupled[0] for g in space.groups if g.depth}
        if not isinstance(dropped, list) or not all(isinstance(n, str) and n in blocks for n in dropped):
            raise _error(path, self.folder, "'dropped' must list residual blocks of the model's depth groups")
        if set(kept) != set(full):
            raise _error(path, self.folder, f"the plan's groups are not the model's {len(full)} channel groups")
        for name, idxs in kept.items():
            if idxs[-1] >= full[name]:
                raise _error(path, self.folder, f"kept.{name} has channel {idxs[-1]}, but the group has {full[name]}")

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
