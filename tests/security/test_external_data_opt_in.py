"""Audit finding 2: ``gate --allow-external-data`` (and ``profile``'s) read a data file anywhere
below the model's folder, ``.git/`` included, and printed ONNX Runtime's error text, which quoted
the file's bytes. The opt-in now takes only plain files beside the model (no folder, nothing
hidden, no link), and no runtime text is ever printed. Each attack stores a secret where a model
of someone else's might point, then checks the refusal is one line and carries none of it."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.cli import main

SECRET = b"[core]\n\trepositoryformatversion = 0\n\tsecret = hunter2-0123456789\n"


def _shape_model(location: str) -> bytes:
    """Reshape [1, 4] to the int64 pair stored at ``location`` (16 bytes): a wrong shape makes the
    runtime fail with the two numbers in its error text, which is how file bytes used to leak."""
    shape = numpy_helper.from_array(np.zeros(2, np.int64), "s")
    shape.ClearField("raw_data")
    shape.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = shape.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g", [x], [y], initializer=[shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _gate(capfd, folder, *args: str) -> tuple[int, str]:
    """gate (or profile) run here, with everything written to fd 1 and 2, the runtime's own too."""
    code = main([*args, "--allow-external-data", "--no-cache"])
    out, err = capfd.readouterr()
    return code, out + err


def _checkout(tmp_path):
    repo = tmp_path / "repo"
    for folder in (repo / ".git", repo / "sub" / ".git", repo / "sub" / "plain", repo / ".hidden"):
        folder.mkdir(parents=True)
    for path in (repo / ".git" / "config", repo / "sub" / ".git" / "config", repo / "sub" / "plain" / "data.bin",
                 repo / ".hidden" / "data.bin", repo / ".env", tmp_path / "outside.txt"):
        path.write_bytes(SECRET)
    (repo / "link.bin").symlink_to(tmp_path / "outside.txt")
    (repo / "inlink.bin").symlink_to(repo / ".git" / "config")  # a link to a file inside the folder
    return repo


@pytest.mark.parametrize(
    "location, words",
    [
        ("../outside.txt", "not a plain file name beside the model"),
        (".git/config", "not a plain file name beside the model"),
        ("sub/.git/config", "not a plain file name beside the model"),
        ("sub/plain/data.bin", "not a plain file name beside the model"),  # below, not beside
        (".hidden/data.bin", "not a plain file name beside the model"),
        (".env", "not a plain file name beside the model"),
        ("link.bin", "is a link"),
        ("inlink.bin", "is a link"),
    ],
)
@pytest.mark.parametrize("command", ["gate", "profile"])
def test_the_opt_in_reads_only_plain_files_beside_the_model(tmp_path, capfd, monkeypatch, location, words, command):
    repo = _checkout(tmp_path)
    (repo / "m.onnx").write_bytes(_shape_model(location))
    (repo / "budgets.yaml").write_text("- model: m.onnx\n  budget_ms: 1.0\n")
    monkeypatch.chdir(repo)
    args = ["gate", "--budgets", "budgets.yaml", "--no-progress"] if command == "gate" else ["profile", "m.onnx"]
    code, text = _gate(capfd, repo, *args)
    assert code == 2 and words in text, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    for leaked in ("hunter2", "repositoryformatversion", "ONNXRuntimeError", str(np.frombuffer(SECRET[:8], np.int64)[0])):
        assert leaked not in text


@pytest.mark.parametrize("command", ["gate", "profile"])
def test_a_model_that_fails_in_the_runtime_is_reported_without_the_runtimes_text(tmp_path, capfd, monkeypatch, command):
    """A user's own model with its data beside it, which the runtime cannot run: the requested
    shape (the data file's bytes) is in ONNX Runtime's error text and log, and neither is shown."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "shape.bin").write_bytes(np.array([7, 31337], np.int64).tobytes())
    (folder / "m.onnx").write_bytes(_shape_model("shape.bin"))
    monkeypatch.chdir(folder)
    args = ["gate", "m.onnx", "--budget-ms", "1", "--no-progress"] if command == "gate" else ["profile", "m.onnx"]
    code, text = _gate(capfd, folder, *args)
    assert code == 2 and "does not run" in text, text
    assert len(text.strip().splitlines()) == 1
    assert "31337" not in text and "onnxruntime_src" not in text and "Reshape" not in text
