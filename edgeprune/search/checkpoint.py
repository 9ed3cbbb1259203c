"""Search checkpoints: an append-only journal of evaluations that makes a killed run resumable.

The GA itself is deterministic for a seed (pymoo draws from its own seeded generator), so the
state worth saving is not the algorithm's internals but the expensive part: every evaluated
candidate. A resumed run replays the search from the start with the same seed; each genome the
journal already holds is answered from it, so the replay reaches the point of the kill in
seconds and from there continues exactly as the uninterrupted run would have. Each evaluation is
flushed and fsynced as it completes: ``kill -9`` loses at most the evaluation in flight.

Files are JSON lines (never pickles): ``evaluations.jsonl`` (one candidate per line) and
``generations.jsonl`` (one per finished generation: counts, best, Pareto front, hypervolume).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.fitness import Candidate
from edgeprune.profiling.stats import LatencyStats
from edgeprune.space import ChannelSpace, Choice

CHECKPOINT_FORMAT_VERSION = 1


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (killed mid-write) is dropped, not an error."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(f"checkpoint file {path} is corrupt at line {number}; delete the checkpoint folder and start again") from None
    return records


class SearchJournal:
    """Evaluations and generations of one search, in a folder of the run's checkpoint."""

    def __init__(self, folder: Path, space: ChannelSpace):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.space = space
        self.evaluations_path = self.folder / "evaluations.jsonl"
        self.generations_path = self.folder / "generations.jsonl"

    # A choice is stored as a width when it is the width encoding's top-k, else as the index list:
    # mobilenet_v2 has ~17k channels, and the width encoding never needs the lists.
    def _encode_choice(self, choice: Choice) -> list:
        return [
            len(kept) if list(kept) == group.kept(len(kept)) else list(kept)
            for group, kept in zip(self.space.groups, choice)
        ]

    def _decode_choice(self, stored: list) -> Choice:
        if len(stored) != len(self.space.groups):
            raise UserError(f"checkpoint {self.folder} belongs to a different channel space; delete it and start again")
        return tuple(
            tuple(group.kept(item)) if isinstance(item, int) else tuple(int(i) for i in item)
            for group, item in zip(self.space.groups, stored)
        )

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
            },
        )

    def candidates(self) -> list[Candidate]:
        out = []
        for r in _read_lines(self.evaluations_path):
            out.append(
                Candidate(
                    choice=self._decode_choice(r["choice"]),
                    accuracy=float(r["accuracy"]),
                    latency=LatencyStats.from_dict(r["latency"]),
                    macs=int(r["macs"]),
                    params=int(r["params"]),
                    from_cache=bool(r["from_cache"]),
                    seconds=float(r["seconds"]),
                    predicted=bool(r.get("predicted", False)),
                )
            )
        return out

    def record_generation(self, entry: dict) -> None:
        _append(self.generations_path, entry)

    def generations(self) -> list[dict]:
        return _read_lines(self.generations_path)


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

    def read_run(self) -> dict:
        if not self.exists():
            raise UserError(
                f"no checkpoint to resume at {self.folder}; pass the --out folder of a run that was interrupted"
            )
        try:
            run = json.loads(self.run_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"checkpoint {self.run_path} is corrupt; delete {self.folder} and start again") from None
        if run.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise UserError(
                f"checkpoint {self.folder} was written by another edgeprune version; delete it and start again"
            )
        return run

    def update_run(self, **fields) -> None:
        _write_json_atomic(self.run_path, {**self.read_run(), **fields})

    def round_folder(self, number: int) -> Path:
        return self.folder / f"round-{number}"

    def save_round(self, number: int, summary: dict, plan: dict, state_dict) -> None:
        import torch

        folder = self.round_folder(number)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, folder / "state_dict.pt")
        _write_json_atomic(folder / "plan.json", plan)
        _write_json_atomic(folder / "done.json", summary)  # written last: marks the round complete

    def finished_round(self, number: int) -> tuple[dict, dict, Path] | None:
        """``(summary, plan, state_dict_path)`` of a completed round, else None."""
        folder = self.round_folder(number)
        if not (folder / "done.json").is_file():
            return None
        read = lambda name: json.loads((folder / name).read_text(encoding="utf-8"))  # noqa: E731
        return read("done.json"), read("plan.json"), folder / "state_dict.pt"

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
