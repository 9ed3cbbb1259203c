"""--rounds: every round's model is kept, loadable, and the last one meets the budget."""

import json
from pathlib import Path

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.tasks.data import load_data
from edgeprune.api.settings import prune_config
from edgeprune.jobs.prune import run_prune
from edgeprune.space.pruned import load_pruned
from edgeprune.jobs.rounds import compose, round_budgets
from edgeprune.space.channels import ChannelPlan
from edgeprune.tasks.training import train

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")


def test_round_budgets_step_down_geometrically_to_the_budget():
    assert round_budgets(1.0, 0.25, 2) == pytest.approx([0.5, 0.25])
    assert round_budgets(2.0, 1.0, 1) == [1.0]


def test_compose_maps_later_indices_onto_the_original():
    outer = ChannelPlan(kept={"a": [1, 3, 5, 7], "b": [0, 1]})
    inner = ChannelPlan(kept={"a": [0, 2]})
    assert compose(outer, inner).kept == {"a": [1, 5], "b": [0, 1]}


def test_two_rounds_keep_both_models_and_the_final_plan_rebuilds(tmp_path):
    # Trained weights: with random ones every candidate scores ~10 %, and round 1 may pick the
    # narrowest network, which leaves round 2 nothing to prune.
    torch.manual_seed(0)
    model = TinyResNet()
    train(model, load_data("digits", holdout=300, seed=0).train, 3, lr=0.05, seed=0, progress=False)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    cfg = prune_config(
        model="tiny_models:tiny_resnet", weights=str(tmp_path / "w.pt"), target=PROFILE, data="digits", holdout=300, speedup=1.3,
        population=4, generations=2, finetune_epochs=0.2, rounds=2, out=str(out),
        cache=str(tmp_path / "c.sqlite"), progress=False,
    )
    report = run_prune(cfg)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["budget_ms"] > rounds[1]["budget_ms"] == pytest.approx(report["budget_ms"])
    for r in rounds:
        model = load_pruned(out / r["plan"], out / r["state_dict"], trust_code=True)
        assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    # The final plan refers to the original model: load_pruned rebuilds the final network exactly.
    final = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    second = load_pruned(out / rounds[1]["plan"], out / rounds[1]["state_dict"], trust_code=True)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(final(x), second(x))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["widths"] == report["pruned"]["group_widths"]
    assert {h["round"] for h in report["search"]["history"]} == {1, 2}
    assert all("hypervolume" in h and "pareto" in h for h in report["search"]["history"])
