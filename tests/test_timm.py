"""timm:NAME models: built without downloads, in their deploy form, pruned end to end, rebuilt from a plan."""

import json
from pathlib import Path

import pytest
import torch

from edgeprune.cli import main
from edgeprune.tasks.models import load_model
from edgeprune.space.pruned import load_pruned
from edgeprune.space.channels import ChannelSpace

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")


def test_a_reparameterisable_timm_model_is_pruned_in_its_deploy_form():
    """MobileOne's training-time branches are merged before the space is built: what is pruned
    and timed is the single-conv form that ships, and the weights given were loaded first."""
    torch.manual_seed(0)
    model, spec = load_model("timm:mobileone_s0", num_classes=10)
    blocks = [m for m in model.modules() if type(m).__name__ == "MobileOneBlock"]
    assert blocks and all(b.reparam_conv is not None and not hasattr(b, "conv_kxk") for b in blocks)
    assert spec["kind"] == "timm"
    space = ChannelSpace(model, (3, 32, 32), step=16, model_spec=spec)
    pruned = space.shrink(space.plan(space.widths_from_indices(space.min_indices())))
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_an_unknown_timm_name_suggests_close_ones(capsys):
    assert main(["prune", "timm:mobilenetv3_smal_100", "--speedup", "2", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "timm has no model 'mobilenetv3_smal_100'" in err and "mobilenetv3_small_100" in err


@pytest.mark.slow
def test_prune_timm_mobilenetv3_small_end_to_end_and_rebuild_from_the_plan(tmp_path):
    out = tmp_path / "out"
    code = main([
        "prune", "timm:mobilenetv3_small_100", "--num-classes", "10", "--data", "digits", "--holdout", "300",
        "--input-shape", "3x32x32", "--target", PROFILE, "--speedup", "1.3", "--population", "4", "--generations", "1",
        "--refine-top", "1", "--refine-epochs", "0", "--widen-passes", "0", "--finetune-epochs", "0.2", "--no-progress",
        "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ])
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["kind"] == "timm" and report["model"]["spec"] == "timm:mobilenetv3_small_100"
    # A timm plan names a library architecture: rebuilt without --trust-model-code.
    model = load_pruned(out / "plan.json", out / "state_dict.pt")
    assert sum(p.numel() for p in model.parameters()) == report["pruned"]["params"]
    assert report["parity"]["max_abs_error"] < 1e-3
