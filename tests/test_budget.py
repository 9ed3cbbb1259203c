"""BudgetPolicy: every limit a prune works to comes from one budget and one set of margins."""

import pytest

from edgeprune.select.budget import DEFAULT_POLICY, BudgetPolicy, percent


def test_the_limits_nest_under_the_budget():
    p = DEFAULT_POLICY
    budget = 2.0
    assert p.widen_limit(budget) < p.search_limit(budget) < budget
    assert p.search_limit(budget) == pytest.approx(1.94) and p.widen_limit(budget) == pytest.approx(1.88)
    assert p.focus * budget < p.widen_limit(budget)


def test_the_confirmation_margin_is_the_search_margin_until_noise_needs_more():
    p = BudgetPolicy(search_margin=0.03, confirm_z=2.0)
    assert p.confirmation_limit(1.0, gap_se=0.001) == pytest.approx(0.97)
    assert p.confirmation_limit(1.0, gap_se=0.05) == pytest.approx(0.90)


def test_help_text_and_report_say_what_the_policy_does():
    assert percent(1 - DEFAULT_POLICY.search_margin) == "97 %"
    assert DEFAULT_POLICY.describe() == {"search_limit": 0.97, "widen_limit": 0.94, "focus": 0.9, "confirm_z": 2.0}


def test_a_latency_equal_to_the_budget_meets_it_and_a_hair_over_does_not():
    assert DEFAULT_POLICY.met(1.0, 1.0) and DEFAULT_POLICY.met(0.5, 1.0)
    assert not DEFAULT_POLICY.met(1.0 + 1e-9, 1.0) and not DEFAULT_POLICY.met(2.0, 1.0)
