"""Exploit 2 on the host side: `gate` and `profile` must not let a model read other files.

A model in a checkout can declare that a tensor's bytes live in another file; ONNX Runtime
resolves the path against the working folder and its error text then printed those bytes (gate
in a checkout printed parts of .git/config). Every such model is refused before a runtime sees it.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.errors import UserError
from edgeprune.profiling.onnx_check import ModelRejected, check_model_bytes, external_tensors
from edgeprune.profiling.onnx_file import load_onnx

SECRET = b"[core]\n\trepositoryformatversion = 0\n\tsecret = hunter2-0123456789\n"


def _model(weight: onnx.TensorProto, *, in_constant: bool = False) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if in_constant:  # the tensor hides in a Constant node's attribute instead of an initializer
        nodes = [helper.make_node("Constant", [], ["w"], value=weight), helper.make_node("Add", ["x", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y])
    else:
        graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(location: str, length: int = 16) -> onnx.TensorProto:
    t = numpy_helper.from_array(np.zeros((1, 4), np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _checkout(tmp_path: Path, location: str, **kw) -> Path:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_bytes(SECRET)
    (tmp_path / "outside.txt").write_bytes(SECRET)
    (repo / "m.onnx").write_bytes(_model(_external(location, **kw)).SerializeToString())
    (repo / "budgets.yaml").write_text("- model: m.onnx\n  budget_ms: 1.0\n")
    return repo


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeprune", *args, "--no-cache"], cwd=repo, env={**os.environ},
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("location", [".git/config", "../outside.txt", str(Path("/etc/hostname"))])
@pytest.mark.parametrize("length", [16, 4096])  # the right size (the output would carry the bytes) and a wrong one (the error would)
def test_gate_and_profile_refuse_a_model_that_reads_another_file(tmp_path, location, length):
    repo = _checkout(tmp_path, location, length=length)
    for args in (["gate", "--budgets", "budgets.yaml", "--no-progress"], ["profile", "m.onnx"]):
        run = _run(repo, *args)
        assert run.returncode == 2, run.stderr
        assert "external data" in run.stderr and "Traceback" not in run.stderr
        for leaked in (b"hunter2", b"repositoryformatversion"):
            assert leaked.decode() not in run.stdout + run.stderr


def test_external_data_in_a_constant_attribute_is_found_too():
    proto = _model(_external(".git/config"), in_constant=True)
    assert external_tensors(proto) == ["w"]
    with pytest.raises(ModelRejected, match="external data"):
        check_model_bytes(proto.SerializeToString())


def test_a_users_own_model_with_data_files_in_its_folder_may_opt_in(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "m.onnx").write_bytes(_model(_external("w.bin")).SerializeToString())
    with pytest.raises(UserError, match="--allow-external-data"):
        load_onnx(folder / "m.onnx")
    blob, shape = load_onnx(folder / "m.onnx", allow_external_data=True)
    assert shape == (1, 4) and not external_tensors(onnx.load_from_string(blob))
    weight = numpy_helper.to_array(onnx.load_from_string(blob).graph.initializer[0])
    assert weight.tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_the_opt_in_still_refuses_data_outside_the_models_folder(tmp_path):
    repo = _checkout(tmp_path, "../outside.txt")
    with pytest.raises(UserError, match="not a plain file name beside the model"):
        load_onnx(repo / "m.onnx", allow_external_data=True)
    run = _run(repo, "profile", "m.onnx", "--allow-external-data")
    assert run.returncode == 2 and "not a plain file name beside the model" in run.stderr and "hunter2" not in run.stderr


def test_a_huge_declared_input_is_refused_before_anything_is_allocated(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 100000, 100000])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UserError, match="more than"):
        load_onnx(path)


def _function_model(weight: onnx.TensorProto) -> onnx.ModelProto:
    """The external tensor hides in a Constant inside an If branch inside a model-local function."""
    y_info = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])
    branch = helper.make_graph([helper.make_node("Constant", [], ["w"], value=weight)], "b", [], [y_info])
    if_node = helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch)
    function = helper.make_function("evil", "Hide", ["x", "c"], ["y"], [if_node, helper.make_node("Add", ["x", "w"], ["y"])],
                                    opset_imports=[helper.make_opsetid("", 17)])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    cond = numpy_helper.from_array(np.array(True), "c")
    graph = helper.make_graph([helper.make_node("Hide", ["x", "c"], ["y"], domain="evil")], "g", [x], [y], initializer=[cond])
    return helper.make_model(graph, functions=[function], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("evil", 1)])


def test_external_data_inside_a_function_subgraph_is_found(tmp_path):
    proto = _function_model(_external(".git/config"))
    assert external_tensors(proto) == ["w", "w"]  # both branches
    repo = _checkout(tmp_path, ".git/config")
    (repo / "m.onnx").write_bytes(proto.SerializeToString())
    run = _run(repo, "profile", "m.onnx")
    assert run.returncode == 2 and "external data" in run.stderr and "hunter2" not in run.stderr


def test_external_data_in_training_info_is_found():
    proto = _model(numpy_helper.from_array(np.zeros((1, 4), np.float32), "w"))
    info = proto.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[_external(".git/config")]))
    assert external_tensors(proto) == ["w"]
