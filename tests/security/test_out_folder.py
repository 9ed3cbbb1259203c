"""Audit finding 6: ``prune --out`` deleted any folder that held a file named report.json (a test
folder lost thesis.txt and photos/). A folder is now replaced only when the marker edgeprune writes
in every output folder lists everything in it; anything else is refused with one line and left as
it was."""

import json
from pathlib import Path

import pytest

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.files import OUTPUT_MARKER, atomic_write_all, foreign_entry, staged_folder


TESTS = Path(__file__).resolve().parent.parent
PRUNE = ["tiny_models:tiny_resnet", "--data", "digits", "--holdout", "300", "--target", str(TESTS / "fixtures" / "fast-cpu.yaml"),
         "--budget-ms", "1", "--population", "4", "--generations", "1", "--finetune-epochs", "0", "--no-progress"]


def _someones_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of someone's work that happens to hold a report.json."""
    folder = tmp_path / "work"
    files = {"report.json": b'{"chapter": 3}', "thesis.txt": b"four years of it", "photos/graduation.jpg": b"\xff\xd8\xff jpeg"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder, files


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_prune_refuses_a_folder_that_merely_holds_a_report_json(tmp_path, capsys):
    folder, files = _someones_folder(tmp_path)
    code = main([*PRUNE, "--out", str(folder), "--cache", str(tmp_path / "c.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not an edgeprune output" in err and "pass a new or empty --out" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert _contents(folder) == files


def test_a_marker_does_not_cover_files_someone_added_to_an_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    with staged_folder(out, output=True) as tmp:
        (tmp / "report.json").write_text("{}")
    (out / "photos").mkdir()
    (out / "photos" / "graduation.jpg").write_bytes(b"jpeg")
    before = _contents(out)
    code = main([*PRUNE, "--out", str(out), "--cache", str(tmp_path / "c.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "it holds photos, which edgeprune did not write" in err and len(err.splitlines()) == 1
    assert _contents(out) == before


def test_a_previous_edgeprune_output_is_replaced(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out, output=True) as tmp:
        (tmp / "report.json").write_text('{"run": 1}')
        (tmp / "rounds" / "round-1").mkdir(parents=True)
        (tmp / "rounds" / "round-1" / "plan.json").write_text("{}")
    assert json.loads((out / OUTPUT_MARKER).read_text())["files"] == ["report.json", "rounds/round-1/plan.json"]
    atomic_write_all(out, {"model.int8.onnx": b"onnx"})  # what `edgeprune export` adds later is edgeprune's too
    (out / ".DS_Store").write_bytes(b"finder")  # a file manager's litter is nobody's work
    assert foreign_entry(out) is None
    with staged_folder(out, output=True) as tmp:
        (tmp / "report.json").write_text('{"run": 2}')
    assert _contents(out) == {"report.json": b'{"run": 2}', OUTPUT_MARKER: (out / OUTPUT_MARKER).read_bytes()}


def test_files_added_while_a_run_goes_on_keep_the_folder_and_the_result(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out, output=True) as tmp:
        (tmp / "report.json").write_text('{"run": 1}')
    with pytest.raises(UserError, match="thesis.txt, which edgeprune did not write") as err:
        with staged_folder(out, output=True) as tmp:
            (tmp / "report.json").write_text('{"run": 2}')
            (out / "thesis.txt").write_text("written during the run")
    assert (out / "thesis.txt").read_text() == "written during the run" and json.loads((out / "report.json").read_text()) == {"run": 1}
    assert json.loads((tmp / "report.json").read_text()) == {"run": 2} and str(tmp) in str(err.value)


@pytest.mark.parametrize("marker", [b"not json", b'{"files": "everything"}', b"[]"])
def test_a_broken_marker_is_no_marker(tmp_path, marker):
    folder, _ = _someones_folder(tmp_path)
    (folder / OUTPUT_MARKER).write_bytes(marker)
    assert "not an edgeprune output" in foreign_entry(folder)


def test_a_real_prune_output_is_fully_listed(tiny_prune):
    assert foreign_entry(tiny_prune.out) is None
    listed = set(json.loads((tiny_prune.out / OUTPUT_MARKER).read_text())["files"])
    assert {"report.json", "plan.json", "state_dict.pt", "model.onnx", "manifest.json", "report.html"} <= listed
