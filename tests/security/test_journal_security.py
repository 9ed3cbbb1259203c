"""The checkpoint of a killed prune is read back as untrusted input.

A torn last line (``kill -9`` in the middle of a write) must be cut before the next record is
appended, or that record is glued onto it and the resume after next fails; and any wrongly
shaped record in run.json, evaluations.jsonl, generations.jsonl, done.json or plan.json must stop
the resume with one ``UserError`` line naming the file, the line and the fix, never a traceback.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.errors import UserError
from edgeprune.records import Candidate
from edgeprune.api.settings import PruneOptions
from edgeprune.profiling.stats import LatencyStats
from edgeprune.jobs.checkpoint import RunCheckpoint, SearchJournal
from edgeprune.space.channels import ChannelSpace

TESTS = Path(__file__).parent.parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
if str(TESTS) not in sys.path:  # tiny_models, as the conftest's fixtures import it
    sys.path.insert(0, str(TESTS))
from tiny_models import TinyResNet  # noqa: E402

LATENCY = {"n": 20, "median": 0.05, "p90": 0.06, "p99": 0.07, "mean": 0.05, "std": 0.01, "cv": 0.2, "noisy": False}
DEEP = b'{"accuracy": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG = b'{"macs": ' + b"7" * 5000 + b"}"


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)


def _candidate(space, widths, accuracy=0.5) -> Candidate:
    stats = LatencyStats.from_dict(LATENCY)
    return Candidate(space.choice(widths), accuracy, stats, 1000, 100, False, 0.1)


def _good_lines(tmp_path, space, count=2) -> list[bytes]:
    """``count`` records as the journal writes them (distinct widths)."""
    journal = SearchJournal(tmp_path / "scratch" / "round-1", space)
    options = space.groups[0].options
    for i in range(count):
        widths = [options[i % len(options)], *(g.full for g in space.groups[1:])]
        journal.record(_candidate(space, widths, accuracy=0.1 * (i + 1)))
    return journal.evaluations_path.read_bytes().splitlines(keepends=True)


def _one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert "delete the checkpoint folder" in message and "start again" in message
    for part in parts:
        assert part in message, message
    return message


# --- 1. torn last line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "torn",
    [b'{"accuracy": 0.3, "cho', b'{"choice": [16], "acc\xe2\x82', b"x" * 200_000, b'{"accuracy": 0.5}'],
    ids=["half-record", "torn-utf8", "longer-than-a-read", "whole-json-without-newline"],
)
def test_a_torn_last_line_is_cut_before_the_next_record_is_appended(tmp_path, space, torn):
    good = _good_lines(tmp_path, space)
    folder = tmp_path / "run.checkpoint" / "round-1"
    folder.mkdir(parents=True)
    (folder / "evaluations.jsonl").write_bytes(b"".join(good) + torn)

    journal = SearchJournal(folder, space)
    journal.record(_candidate(space, [g.full for g in space.groups], accuracy=0.9))
    back = journal.candidates()

    assert [c.accuracy for c in back] == pytest.approx([0.1, 0.2, 0.9])
    assert journal.evaluations_path.read_bytes().count(b"\n") == 3
    # ...and the journal opened again (the resume after next) reads the same three.
    assert [c.accuracy for c in SearchJournal(folder, space).candidates()] == pytest.approx([0.1, 0.2, 0.9])


def test_a_journal_that_is_only_a_torn_line_starts_empty(tmp_path, space):
    folder = tmp_path / "run.checkpoint" / "round-1"
    folder.mkdir(parents=True)
    (folder / "evaluations.jsonl").write_bytes(b'{"choi')
    (folder / "generations.jsonl").write_bytes(b'{"genera')
    journal = SearchJournal(folder, space)
    assert journal.candidates() == [] and journal.generations() == []
    assert journal.evaluations_path.read_bytes() == b"" and journal.generations_path.read_bytes() == b""


@pytest.mark.parametrize("where", ["middle", "last-with-newline"])
def test_a_bad_line_anywhere_but_a_torn_tail_is_corruption(tmp_path, space, where):
    good = _good_lines(tmp_path, space)
    folder = tmp_path / "run.checkpoint" / "round-1"
    folder.mkdir(parents=True)
    lines = [good[0], b'{"accuracy": 0.3, "cho\n', good[1]] if where == "middle" else [*good, b'{"accuracy": 0.3, "cho\n']
    (folder / "evaluations.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(UserError) as excinfo:
        SearchJournal(folder, space).candidates()
    line = 2 if where == "middle" else 3
    _one_line_error(excinfo, f"evaluations.jsonl line {line}: not valid JSON", str(tmp_path / "run.checkpoint"))


# --- 2. wrongly shaped records -----------------------------------------------------------------


def _mutated(record: dict, **changes) -> bytes:
    out = dict(record)
    for key, value in changes.items():
        if value is KeyError:
            out.pop(key)
        else:
            out[key] = value
    return json.dumps(out).encode()


def _evaluation_cases(record: dict, space) -> list[tuple[str, bytes, str]]:
    """(id, line, what the message must say) for every wrong evaluation record."""
    g0 = space.groups[0]
    rest = record["choice"][1:]
    bad_choices = {
        "choice-a-string": ("abc", "choice must be a list"),
        "choice-too-short": (record["choice"][:1], "choice is for 1 channel groups, the model has 3"),
        "choice-too-long": ([*record["choice"], 16], "channel groups, the model has 3"),
        "width-off-grid": ([3, *rest], "choice[0] keeps 3 channels"),
        "width-a-bool": ([True, *rest], "choice[0] must be a width or a list"),
        "width-a-string": (["16", *rest], "choice[0] must be a width or a list"),
        "index-out-of-range": ([list(range(15)) + [g0.full], *rest], f"from 0 to {g0.full - 1}"),
        "index-negative": ([[-1, *range(15)], *rest], "ascending channel indices"),
        "index-repeated": ([[0, 0, *range(2, 16)], *rest], "ascending channel indices"),
        "index-unsorted": ([[1, 0, *range(2, 16)], *rest], "ascending channel indices"),
        "index-list-nested": ([[[0]], *rest], "choice[0] must be a width or a list"),
        "index-list-empty": ([[], *rest], "keeps 0 channels"),
    }
    cases = [(name, _mutated(record, choice=c), why) for name, (c, why) in bad_choices.items()]
    return cases + [
        ("a-list", b"[1, 2, 3]", "must be a JSON object, got a list"),
        ("a-number", b"5", "must be a JSON object, got 5"),
        ("a-string", b'"hello"', "must be a JSON object"),
        ("no-accuracy", _mutated(record, accuracy=KeyError), "has no 'accuracy'"),
        ("accuracy-a-string", _mutated(record, accuracy="x"), 'accuracy must be a number from 0 to 1, got "x"'),
        ("accuracy-above-1", _mutated(record, accuracy=7.5), "accuracy must be a number from 0 to 1"),
        ("accuracy-nan", _mutated(record, accuracy=float("nan")), "accuracy must be a number from 0 to 1, got NaN"),
        ("accuracy-inf", _mutated(record, accuracy=1e999), "accuracy must be a number from 0 to 1, got Infinity"),
        ("latency-empty", _mutated(record, latency={}), "latency has no 'n'"),
        ("latency-a-list", _mutated(record, latency=[1]), "latency must be a JSON object, got a list"),
        ("latency-negative", _mutated(record, latency={**LATENCY, "median": -1.0}), "latency.median must be a finite number >= 0"),
        ("latency-n-fraction", _mutated(record, latency={**LATENCY, "n": 1.5}), "latency.n must be a whole number"),
        ("macs-negative", _mutated(record, macs=-1), "macs must be a whole number >= 0, got -1"),
        ("macs-a-bool", _mutated(record, macs=True), "macs must be a whole number >= 0, got true"),
        ("macs-huge", _mutated(record, macs=10**400), "macs must be a whole number >= 0, got 1000"),
        ("macs-5000-digits", LONG, "a number too long"),
        ("from-cache-a-string", _mutated(record, from_cache="yes"), "from_cache must be true or false"),
        ("seconds-negative", _mutated(record, seconds=-0.5), "seconds must be a finite number >= 0"),
        ("predicted-a-number", _mutated(record, predicted=1), "predicted must be true or false"),
        ("deeply-nested", DEEP, "nested too deeply"),
        ("invalid-utf8", b'{"choice": "\xff\xfe"}', "not UTF-8 text"),
        ("empty-line", b"", "not valid JSON"),
    ]


def test_every_wrong_evaluation_record_is_a_one_line_error(tmp_path, space):
    good = _good_lines(tmp_path, space)
    record = json.loads(good[0])
    cases = _evaluation_cases(record, space)
    for number, (name, line, why) in enumerate(cases):
        folder = tmp_path / f"case-{number}.checkpoint" / "round-1"
        folder.mkdir(parents=True)
        (folder / "evaluations.jsonl").write_bytes(good[0] + line + b"\n" + good[1])
        with pytest.raises(UserError) as excinfo:
            SearchJournal(folder, space).candidates()
        assert why in str(excinfo.value), f"{name}: {excinfo.value}"
        _one_line_error(excinfo, f"{folder / 'evaluations.jsonl'} line 2: ", f"delete the checkpoint folder {folder.parent} ")


GENERATION = {"generation": 1, "evaluations": 6, "best_accuracy": 0.5, "best_latency_ms": 0.04, "hypervolume": 0.3,
              "pareto": [{"accuracy": 0.5, "latency_ms": 0.04, "macs": 1000}], "wall_s": 1.5}


@pytest.mark.parametrize(
    "line, why",
    [
        (b"[]", "must be a JSON object"),
        (_mutated(GENERATION, generation=0), "generation must be a whole number >= 1"),
        (_mutated(GENERATION, best_accuracy="x"), "best_accuracy must be a number from 0 to 1"),
        (_mutated(GENERATION, pareto={}), "pareto must be a list"),
        (_mutated(GENERATION, pareto=[{"accuracy": 0.5}]), "pareto[0] has no 'latency_ms'"),
        (_mutated(GENERATION, hypervolume=float("-inf")), "hypervolume must be a finite number"),
        (_mutated(GENERATION, wall_s=KeyError), "has no 'wall_s'"),
    ],
)
def test_every_wrong_generation_record_is_a_one_line_error(tmp_path, space, line, why):
    folder = tmp_path / "run.checkpoint" / "round-1"
    folder.mkdir(parents=True)
    good = json.dumps(GENERATION).encode() + b"\n"
    (folder / "generations.jsonl").write_bytes(good + line + b"\n")
    with pytest.raises(UserError) as excinfo:
        SearchJournal(folder, space).generations()
    _one_line_error(excinfo, "generations.jsonl line 2: ", why)


def test_good_generations_read_back(tmp_path, space):
    journal = SearchJournal(tmp_path / "run.checkpoint" / "round-1", space)
    journal.record_generation(GENERATION)
    journal.record_generation({**GENERATION, "generation": 2, "best_accuracy": None, "best_latency_ms": None})
    assert [g["generation"] for g in journal.generations()] == [1, 2]


# --- run.json ----------------------------------------------------------------------------------


def _config(out: Path, cache: Path, **changes) -> dict:
    """The settings as release 0.1.0 wrote them into run.json (format 1: PruneOptions less resume/progress)."""
    cfg = PruneOptions(
        model="tiny_models:tiny_resnet", target=PROFILE, data="digits", holdout=300, budget_ms=5.0, population=6,
        generations=4, finetune_epochs=0.0, seed=3, out=str(out.resolve()), cache=str(cache.resolve()), progress=False,
    )
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "progress")}
    return {**config, **changes}


def _write_run(out: Path, run) -> Path:
    folder = out.parent / f"{out.name}.checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    path.write_bytes(run if isinstance(run, bytes) else json.dumps(run).encode())
    return path


def _run(out: Path, **changes) -> dict:
    run = {"format_version": 1, "config": _config(out, out.parent / "c.sqlite"), "budget_ms": 5.0, "anchor": dict(LATENCY)}
    return {**run, **changes}


RUN_CASES = [
    ("a-list", lambda out: [1, 2], ": must be a JSON object, got a list"),
    ("a-number", lambda out: 3, ": must be a JSON object, got 3"),
    ("no-version", lambda out: {"config": {}}, ": has no 'format_version'"),
    ("version-a-string", lambda out: _run(out, format_version="1"), 'format_version must be a whole number, got "1"'),
    ("no-config", lambda out: {k: v for k, v in _run(out).items() if k != "config"}, "has no 'config'"),
    ("config-a-list", lambda out: _run(out, config=["model"]), "config must be a JSON object, got a list"),
    ("budget-negative", lambda out: _run(out, budget_ms=-5), "budget_ms must be a finite number > 0, got -5"),
    ("budget-a-string", lambda out: _run(out, budget_ms="5"), 'budget_ms must be a finite number > 0, got "5"'),
    ("budget-nan", lambda out: _run(out, budget_ms=float("nan")), "budget_ms must be a finite number > 0, got NaN"),
    ("anchor-empty", lambda out: _run(out, anchor={}), "anchor has no 'n'"),
    ("anchor-zero", lambda out: _run(out, anchor={**LATENCY, "median": 0}), "anchor.median must be a finite number > 0"),
    ("5000-digits", lambda out: b'{"format_version": 1, "budget_ms": ' + b"9" * 5000 + b"}", "a number too long"),
    ("deeply-nested", lambda out: b'{"format_version": 1, "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("invalid-utf8", lambda out: b'{"format_version": 1, "config": "\xc3\x28"}', "not UTF-8 text"),
    ("truncated", lambda out: json.dumps(_run(out)).encode()[:40], "not valid JSON"),
]


@pytest.mark.parametrize("make, why", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_every_wrong_run_json_is_a_one_line_error(tmp_path, make, why):
    out = tmp_path / "out"
    path = _write_run(out, make(out))
    with pytest.raises(UserError) as excinfo:
        RunCheckpoint(out).read_run()
    _one_line_error(excinfo, f"checkpoint file {path}: ", why, f"delete the checkpoint folder {path.parent} ")


def test_run_json_of_another_version_says_so(tmp_path):
    out = tmp_path / "out"
    _write_run(out, _run(out, format_version=3))
    with pytest.raises(UserError, match="written by another edgeprune version"):
        RunCheckpoint(out).read_run()


# --- run.json's settings, checked against their field types (for resume_config) ----------------


def test_read_config_gives_pruneconfig_its_arguments(tmp_path):
    out = tmp_path / "out"
    config = _config(out, tmp_path / "c.sqlite", mean=[0.5], std=[0.25], unknown_key="ignored", resume=True, progress=True)
    _write_run(out, _run(out, config=config))
    kwargs = RunCheckpoint(out).read_config(PruneOptions)
    assert kwargs["mean"] == (0.5,) and kwargs["std"] == (0.25,)  # JSON lists back to tuples
    assert "unknown_key" not in kwargs and "resume" not in kwargs and "progress" not in kwargs
    cfg = PruneOptions(**kwargs, resume=True, progress=False)
    assert cfg.population == 6 and cfg.model == "tiny_models:tiny_resnet"


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"population": "x"}, 'config.population must be of type int, got "x"'),
        ({"population": 6.5}, "config.population must be of type int, got 6.5"),
        ({"seed": True}, "config.seed must be of type int, got true"),
        ({"lr": "fast"}, "config.lr must be of type float"),
        ({"budget_ms": [5]}, "config.budget_ms must be of type float | None, got a list"),
        ({"mean": ["a"]}, "config.mean must be of type tuple[float, ...] | None, got a list"),
        ({"model": 7}, "config.model must be of type str, got 7"),
        ({"screen": "no"}, "config.screen must be of type bool"),
        ({"model": KeyError}, "config has no 'model'"),
    ],
)
def test_read_config_refuses_settings_of_the_wrong_type(tmp_path, changes, why):
    out = tmp_path / "out"
    config = _config(out, tmp_path / "c.sqlite")
    for key, value in changes.items():
        config.pop(key) if value is KeyError else config.__setitem__(key, value)
    _write_run(out, _run(out, config=config))
    with pytest.raises(UserError) as excinfo:
        RunCheckpoint(out).read_config(PruneOptions)
    _one_line_error(excinfo, "run.json: ", why)


# --- a finished round: done.json, plan.json, state_dict.pt ---------------------------------------


def _finished_round(tmp_path, space) -> tuple[RunCheckpoint, Path]:
    """A round folder as save_round leaves it (the weights file only has to exist)."""
    checkpoint = RunCheckpoint(tmp_path / "out")
    folder = checkpoint.round_folder(1)
    folder.mkdir(parents=True)
    full = [g.full for g in space.groups]
    summary = {"round": 1, "budget_ms": 5.0, "latency_ms": 0.04, "holdout_accuracy": 0.5,
               "holdout_accuracy_before_finetune": 0.4, "macs": 1000, "params": 100, "group_widths_round": full,
               "evaluations": 1, "search_s": 1.0, "finetune_s": 0.0, "finetune": {"epochs": 0}}
    (folder / "done.json").write_text(json.dumps(summary))
    (folder / "plan.json").write_text(json.dumps({"kept": {g.name: list(range(g.full)) for g in space.groups}}))
    (folder / "state_dict.pt").write_bytes(b"")
    return checkpoint, folder


def test_a_good_finished_round_reads_back(tmp_path, space):
    checkpoint, folder = _finished_round(tmp_path, space)
    summary, plan, state = checkpoint.finished_round(1, space)
    assert summary["round"] == 1 and set(plan["kept"]) == {g.name for g in space.groups} and state == folder / "state_dict.pt"
    assert checkpoint.finished_round(2) is None


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_bytes(change(data) if callable(change) else change)


FINISHED_CASES = [
    ("done-a-list", "done.json", b"[]", "done.json: must be a JSON object, got a list"),
    ("done-no-widths", "done.json", lambda d: _mutated(d, group_widths_round=KeyError), "has no 'group_widths_round'"),
    ("done-latency-a-string", "done.json", lambda d: _mutated(d, latency_ms="x"), "latency_ms must be a finite number >= 0"),
    ("done-widths-strings", "done.json", lambda d: _mutated(d, group_widths_round=["16"]), "group_widths_round[0] must be a whole number >= 1"),
    ("done-other-round", "done.json", lambda d: _mutated(d, round=2), "round is 2, not 1"),
    ("done-finetune-a-number", "done.json", lambda d: _mutated(d, finetune=1), "finetune must be a JSON object"),
    ("done-truncated", "done.json", b'{"round": 1, "lat', "done.json: not valid JSON"),
    ("plan-kept-a-list", "plan.json", lambda d: _mutated(d, kept=[1]), "kept must be a JSON object, got a list"),
    ("plan-unsorted", "plan.json", lambda d: _mutated(d, kept={k: v[::-1] for k, v in d["kept"].items()}), "a non-empty ascending list of channel indices"),
    ("plan-out-of-range", "plan.json", lambda d: _mutated(d, kept={k: [*v, 10_000] for k, v in d["kept"].items()}), "has channel 10000, but the group has"),
    ("plan-other-groups", "plan.json", lambda d: _mutated(d, kept={"not.a.layer": [0]}), "the plan's groups are not the model's"),
    ("plan-key-with-newline", "plan.json", lambda d: _mutated(d, kept={"a\nb": [1, 0]}), 'kept."a\\nb" must be a non-empty ascending'),
    ("plan-invalid-utf8", "plan.json", b'{"kept": "\xff"}', "plan.json: not UTF-8 text"),
]


@pytest.mark.parametrize("name, change, why", [c[1:] for c in FINISHED_CASES], ids=[c[0] for c in FINISHED_CASES])
def test_every_wrong_finished_round_is_a_one_line_error(tmp_path, space, name, change, why):
    checkpoint, folder = _finished_round(tmp_path, space)
    _edit(folder / name, change)
    with pytest.raises(UserError) as excinfo:
        checkpoint.finished_round(1, space)
    _one_line_error(excinfo, why, f"delete the checkpoint folder {checkpoint.folder} ")


@pytest.mark.parametrize("missing", ["plan.json", "state_dict.pt"])
def test_a_finished_round_with_a_file_missing_is_a_one_line_error(tmp_path, space, missing):
    checkpoint, folder = _finished_round(tmp_path, space)
    (folder / missing).unlink()
    with pytest.raises(UserError) as excinfo:
        checkpoint.finished_round(1, space)
    _one_line_error(excinfo, f"{folder / missing}: missing")


# --- through the CLI: `edgeprune --resume OUT` exits 2 with one line, no traceback -----------------


def _resume_cli(out: Path) -> subprocess.CompletedProcess:
    # --trust-model-code: the checkpoint's model is a package.module:factory (imported).
    return subprocess.run(
        [sys.executable, "-m", "edgeprune", "--resume", str(out), "--no-progress", "--trust-model-code"],
        cwd=TESTS, env={**os.environ, "PYTHONPATH": str(TESTS)}, capture_output=True, text=True, timeout=300,
    )


def _assert_cli_error(run: subprocess.CompletedProcess, *parts: str) -> None:
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    # Progress lines ("measuring baseline") may come first; the error is one line, the last.
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("edgeprune: error: checkpoint file "), run.stderr[-2000:]
    for part in parts:
        assert part in lines[-1], lines[-1]


@pytest.mark.parametrize(
    "run, why",
    [(b"[1, 2]", "run.json: must be a JSON object, got a list"), (LONG, "a number too long"), (b'{"x": "\xff"}', "not UTF-8 text")],
    ids=["a-list", "5000-digits", "invalid-utf8"],
)
def test_resume_of_a_wrong_run_json_is_a_one_line_cli_error(tmp_path, run, why):
    out = tmp_path / "out"
    path = _write_run(out, run)
    _assert_cli_error(_resume_cli(out), str(path), why)


def test_resume_of_a_wrong_journal_is_a_one_line_cli_error(tmp_path, space):
    """A complete run.json (PruneConfig's settings, as run_prune writes it) and a journal whose
    second record keeps a channel the group does not have: the resume gets as far as the search."""
    out = tmp_path / "out"
    _write_run(out, _run(out))
    good = _good_lines(tmp_path, space)
    record = json.loads(good[0])
    record["choice"][0] = list(range(15)) + [space.groups[0].full]
    folder = RunCheckpoint(out).round_folder(1)
    folder.mkdir(parents=True)
    (folder / "evaluations.jsonl").write_bytes(good[0] + json.dumps(record).encode() + b"\n")
    _assert_cli_error(_resume_cli(out), f"{folder / 'evaluations.jsonl'} line 2: choice[0] must list ascending channel indices")
