"""Depth genes (``prune --depth``): residual blocks dropped whole, planned, rebuilt and reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TinyBlockNet, TinyResNet

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import load_model
from edgeprune.space.pruned import load_pruned
from edgeprune.space.channels import DEPTH_PREFIX, ChannelSpace, residual_blocks

TESTS = Path(__file__).parent
SHAPE = (1, 8, 8)


def _space(model, depth=True):
    return ChannelSpace(model.eval(), SHAPE, 16, model_spec={"kind": "factory", "spec": "tiny_models:tiny_blocknet", "num_classes": 10}, depth=depth)


def test_residual_blocks_are_found_only_where_the_identity_can_stand_in():
    assert residual_blocks(TinyBlockNet()) == ["blocks.0", "blocks.1"]
    assert residual_blocks(TinyResNet()) == []  # a hand-written skip: no gene rather than a wrong one
    mobilenet, _ = load_model("torchvision:mobilenet_v2", 10)
    blocks = residual_blocks(mobilenet)
    assert len(blocks) == 10 and "features.1" not in blocks  # stride or width changes have no skip
    resnet, _ = load_model("torchvision:resnet18", 10)
    assert residual_blocks(resnet) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_a_dropped_block_is_gone_from_the_network_the_plan_and_the_onnx_file():
    net = TinyBlockNet()
    space = _space(net)
    depth = [g for g in space.groups if g.depth]
    assert [g.name for g in depth] == [DEPTH_PREFIX + "blocks.0", DEPTH_PREFIX + "blocks.1"]
    assert _space(net, depth=False).groups == [g for g in space.groups if not g.depth]
    full = space.widths_from_indices(space.full_indices())
    widths = tuple(0 if g.name.endswith("blocks.1") else w for g, w in zip(space.groups, full))
    plan = space.plan(widths)
    assert plan.dropped == ["blocks.1"] and all(not n.startswith(DEPTH_PREFIX) for n in plan.kept)
    assert plan.to_dict()["format_version"] == 2 and plan.to_dict()["dropped"] == ["blocks.1"]
    assert space.arch_key(widths) != space.arch_key(full)
    model = space.shrink(plan)
    assert isinstance(model.blocks[1], torch.nn.Identity) and not isinstance(model.blocks[0], torch.nn.Identity)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        expected = space.model.head(space.model.pool(space.model.blocks[0](space.model.stem(x))).flatten(1))
    assert torch.allclose(model(x), expected, atol=1e-5)  # the block's input is non-negative: dropping it is x -> x
    convs_before = export_onnx_bytes(space.model, (1, *SHAPE), 17).count(b"Conv")
    assert export_onnx_bytes(model, (1, *SHAPE), 17).count(b"Conv") < convs_before
    # channel profiles (uniform, ratio seeds) keep every block
    assert all(space.uniform_indices(0.3)[i] == 1 for i, g in enumerate(space.groups) if g.depth)


def test_a_plan_with_dropped_blocks_reloads_and_one_naming_anything_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    space = _space(TinyBlockNet())
    widths = tuple(0 if g.depth and g.name.endswith("blocks.0") else g.options[-1] for g in space.groups)
    plan = space.plan(widths)
    model = space.shrink(plan)
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    torch.save(model.state_dict(), tmp_path / "state_dict.pt")
    again = load_pruned(tmp_path / "plan.json", tmp_path / "state_dict.pt", trust_code=True)
    x = torch.randn(1, *SHAPE)
    assert torch.equal(again(x), model(x))
    for dropped, words in ((["stem"], "does not fit"), (["blocks.9"], "does not fit"), ([7], "'dropped'")):
        (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict() | {"dropped": dropped}))
        with pytest.raises(UserError, match=words):
            load_pruned(tmp_path / "plan.json", tmp_path / "state_dict.pt", trust_code=True)
    old = plan.to_dict() | {"format_version": 1}  # a format-1 plan that drops blocks: a reader of 1 would keep them
    (tmp_path / "plan.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match="format 2"):
        load_pruned(tmp_path / "plan.json", tmp_path / "state_dict.pt", trust_code=True)


@pytest.mark.parametrize("extra", [["--strategy", "coevolution"], ["--encoding", "mask"], ["--rounds", "2"]])
def test_depth_with_a_search_that_cannot_carry_it_is_exit_2(extra, tmp_path, capsys):
    from edgeprune.cli import main

    code = main(["prune", "torchvision:mobilenet_v2", "--speedup", "2", "--depth", *extra, "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "--depth works with --strategy nsga2" in capsys.readouterr().err


def test_prune_with_depth_end_to_end_reports_and_ships_what_it_dropped(tmp_path):
    """The CLI on the tiny block net: depth genes searched, the delivered plan reloads, and the
    report names the dropped blocks (whichever the search chose, possibly none)."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "edgeprune", "tiny_models:tiny_blocknet", "--data", "digits", "--holdout", "300",
        "--target", str(TESTS / "fixtures" / "fast-cpu.yaml"), "--speedup", "1.3", "--depth", "--population", "6",
        "--generations", "3", "--refine-top", "2", "--refine-epochs", "0", "--widen-passes", "0", "--finetune-epochs", "0.2",
        "--no-progress", "--seed", "1", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ]
    run = subprocess.run(cmd, cwd=TESTS, env={**os.environ, "PYTHONPATH": str(TESTS)}, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert report["pruned"]["dropped_blocks"] == plan.get("dropped", [])
    assert set(report["pruned"]["dropped_blocks"]) <= {"blocks.0", "blocks.1"}
    depth_genes = [p for p in report["pareto"] if any(k.startswith(DEPTH_PREFIX) for k in p["widths"])]
    assert depth_genes, "the search's genomes carry the depth genes"
    if report["pruned"]["dropped_blocks"]:
        assert "dropped residual blocks" in " ".join(run.stderr.split() + run.stdout.split())
