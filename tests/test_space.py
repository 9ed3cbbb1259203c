"""Channel space and physical shrink on real torchvision models and a tiny residual net."""

import json

import pytest
import torch
import torchvision
from tiny_models import TinyResNet

from edgeprune.space.channels import ChannelSpace, layer_widths, macs_and_params


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def tv_space(request):
    torch.manual_seed(0)
    model = torchvision.models.get_model(request.param, weights=None, num_classes=10).eval()
    return ChannelSpace(model, (3, 32, 32), step=16, model_spec={"kind": "torchvision", "spec": request.param})


def test_output_layer_is_never_pruned(tv_space):
    assert tv_space.groups
    assert tv_space.output_layer_names and all(g.name not in tv_space.output_layer_names for g in tv_space.groups)
    pruned = tv_space.shrink(tv_space.plan(tv_space.widths_from_indices(tv_space.min_indices())))
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_widths_are_on_the_step_grid(tv_space):
    for g in tv_space.groups:
        assert all(w % 16 == 0 for w in g.options[:-1])
        assert g.options[-1] == g.full and g.options[0] == 16


def test_shrink_is_physical_and_follows_the_plan(tv_space):
    widths = tv_space.widths_from_indices(tv_space.uniform_indices(0.5))
    plan = tv_space.plan(widths)
    pruned = tv_space.shrink(plan)
    modules = dict(pruned.named_modules())
    for g, w in zip(tv_space.groups, widths):
        root = modules[g.name]
        assert (root.out_channels if isinstance(root, torch.nn.Conv2d) else root.out_features) == w
    macs, params = macs_and_params(pruned, (3, 32, 32))
    base_macs, base_params = macs_and_params(tv_space.model, (3, 32, 32))
    assert macs < 0.5 * base_macs and params < 0.5 * base_params
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # the original is untouched
    assert macs_and_params(tv_space.model, (3, 32, 32)) == (base_macs, base_params)


def test_kept_channels_are_the_most_important_and_weights_are_copied():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    with torch.no_grad():
        model.down[0].weight.mul_(0.01)
        model.down[0].weight[[5, 40, 63]] *= 1000.0  # three channels made clearly the biggest
    space = ChannelSpace(model, (1, 8, 8), step=16)
    group = next(g for g in space.groups if g.name == "down.0")
    assert set(group.order[:3]) == {5, 40, 63}
    widths = [16 if g.name == "down.0" else g.full for g in space.groups]
    plan = space.plan(widths)
    assert {5, 40, 63} <= set(plan.kept["down.0"])
    pruned = space.shrink(plan)
    kept = plan.kept["down.0"]
    assert torch.equal(pruned.down[0].weight, model.down[0].weight[kept])
    assert torch.equal(pruned.head.weight, model.head.weight[:, kept])


def test_residual_coupling_prunes_stem_and_block_together():
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    stem = next(g for g in space.groups if "stem.0" in g.coupled)
    assert "block.3" in stem.coupled  # the residual add couples the stem and the block output
    widths = [16 for _ in space.groups]
    pruned = space.shrink(space.plan(widths))
    assert layer_widths(pruned)["stem.0"] == layer_widths(pruned)["block.3"] == 16
    assert pruned(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_plan_is_json_and_its_digest_is_stable():
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16, model_spec={"kind": "factory", "spec": "x:y"})
    widths = space.widths_from_indices(space.uniform_indices(0.5))
    plan = space.plan(widths)
    blob = json.loads(json.dumps(plan.to_dict()))
    assert blob["format_version"] == 1 and blob["model"]["spec"] == "x:y"
    assert blob["widths"] == {g.name: w for g, w in zip(space.groups, widths)}
    assert plan.digest() == space.plan(widths).digest()
    assert space.arch_key(widths) != space.arch_key(space.widths_from_indices(space.full_indices()))


def test_a_torch_pruning_without_a_patched_name_is_refused_in_one_line(monkeypatch):
    """space/channels.py patches Torch-Pruning's index mappings: a version without them must say
    so, with the installed version and the pin to install, not fail inside a graph build."""
    import importlib.metadata

    from torch_pruning.dependency import index_mapping

    from edgeprune.errors import UserError
    from edgeprune.space import channels

    channels.check_torch_pruning()  # the installed version has every name
    monkeypatch.delattr(index_mapping, "update_concat_index_mapping")
    installed = importlib.metadata.version("torch-pruning")
    with pytest.raises(UserError) as caught:
        channels.check_torch_pruning()
    message = str(caught.value)
    assert "\n" not in message and f"Torch-Pruning {installed} lacks" in message and "update_concat_index_mapping" in message
    assert "pip install 'torch-pruning>=1.6.1,<1.7'" in message


def test_the_torch_pruning_probe_runs_when_the_channel_space_is_imported():
    """At import, before any model is built: a fresh interpreter whose Torch-Pruning lacks the
    reshape mapping cannot import the channel space."""
    import subprocess
    import sys

    code = ("from torch_pruning.dependency import index_mapping\n"
            "del index_mapping.update_reshape_index_mapping\n"
            "import edgeprune.space.channels\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "update_reshape_index_mapping, which edgeprune's channel space patches" in run.stderr
