"""plan.json + state_dict → the same pruned network, with no pickle load anywhere."""

import json
import pickle

import numpy as np
import pytest
import torch

from edgeprune.errors import UserError
from edgeprune.tasks.models import load_model
from edgeprune.space.pruned import load_pruned, read_plan
from edgeprune.search.encoding import MaskEncoding
from edgeprune.space.channels import ChannelSpace

SHAPE = (3, 32, 32)


def _save(tmp_path, space, choice):
    plan = space.plan_of(choice)
    pruned = space.shrink(plan)
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    torch.save(pruned.state_dict(), tmp_path / "state_dict.pt")
    return pruned


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0"])
def test_round_trip_is_bitwise_equal(tmp_path, monkeypatch, name):
    torch.manual_seed(0)
    model, spec = load_model(f"torchvision:{name}", num_classes=10)
    space = ChannelSpace(model, SHAPE, step=8, model_spec=spec)
    # a mask genome: arbitrary kept channels, not just the top-k, must survive the round trip
    enc = MaskEncoding(space)
    choice = enc.decode(enc.initial(8, np.random.default_rng(0))[-1])
    pruned = _save(tmp_path, space, choice)

    def no_unpickling(*_a, **_k):
        raise AssertionError("load_pruned must not unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    rebuilt = load_pruned(tmp_path / "plan.json", tmp_path / "state_dict.pt")
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())


def test_plan_errors_are_user_errors(tmp_path):
    torch.manual_seed(0)
    model, spec = load_model("torchvision:resnet18", num_classes=10)
    space = ChannelSpace(model, SHAPE, step=16, model_spec=spec)
    _save(tmp_path, space, space.choice(space.widths_from_indices(space.uniform_indices(0.5))))
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert read_plan(tmp_path / "plan.json").kept == plan["kept"]
    with pytest.raises(UserError, match="not found"):
        read_plan(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({**plan, "format_version": 0}))
    with pytest.raises(UserError, match="format 0"):
        read_plan(tmp_path / "old.json")
    # weights of another width do not load into the plan's architecture
    other = space.shrink(space.plan(space.widths_from_indices(space.uniform_indices(0.25))))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not match"):
        load_pruned(tmp_path / "plan.json", tmp_path / "other.pt")
