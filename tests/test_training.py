import copy
import io

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from tiny_models import TinyCNN

from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.tasks.training import _lr_factor, evaluate, train


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = TinyCNN()
    before = evaluate(model, digits.test)
    result = train(model, digits.train, 3, lr=0.1, batch_size=32, seed=0, progress=False)
    return model, before, result


def test_training_learns_digits(digits, trained):
    model, before, result = trained
    assert before < 0.3
    assert result["steps"] == 3 * (len(digits.train) // 32)
    assert result["final_loss"] < 1.0 and result["seconds"] > 0
    assert not model.training
    assert evaluate(model, digits.test) > 0.8
    assert evaluate(model, digits.holdout) > 0.8


def test_training_is_seeded(digits):
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TinyCNN()
        results.append((train(model, digits.train, 0.5, batch_size=64, seed=7, progress=False), model))
    (first, a), (second, b) = results
    assert first["final_loss"] == second["final_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fractional_epochs_and_external_progress(digits):
    model = TinyCNN()
    bar = Progress(console=Console(file=io.StringIO()))
    result = train(model, digits.train, 0.25, batch_size=32, progress=bar, description="tune")
    assert result["steps"] == round(0.25 * (len(digits.train) // 32))
    (task,) = bar.tasks
    assert task.description == "tune" and task.completed == result["steps"]


def test_knowledge_distillation_runs_and_changes_weights(digits, trained):
    teacher = trained[0]
    teacher.train()  # must be switched to eval for the soft targets and then restored
    torch.manual_seed(1)
    student = TinyCNN(width=8)
    start = copy.deepcopy(student.state_dict())
    teacher_state = copy.deepcopy(teacher.state_dict())
    result = train(student, digits.train, 3, lr=0.1, batch_size=32, teacher=teacher, kd_alpha=0.7, progress=False)
    assert torch.isfinite(torch.tensor(result["final_loss"]))
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert teacher.training
    teacher.eval()
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert evaluate(student, digits.test) > 0.7


def test_divergence_is_reported_with_a_fix(digits):
    with pytest.raises(UserError, match="lower the learning rate"):
        train(TinyCNN(), digits.train, 1, lr=1e12, batch_size=32, warmup=False, progress=False)


def test_evaluate_keeps_training_flag(digits):
    model = TinyCNN()
    model.train()
    accuracy = evaluate(model, digits.holdout)
    assert 0 <= accuracy <= 1 and model.training


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [_lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert _lr_factor(100, 100, 10) == pytest.approx(0.0)
