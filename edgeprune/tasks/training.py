"""Accuracy and (fine-)tuning on CPU: the two things every pruned candidate needs.

Fine-tuning a pruned model recovers most of its accuracy; distilling from the unpruned original
(``teacher``) recovers more than labels alone, because the teacher's soft outputs carry what the
pruned-away channels knew about similar classes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from edgeprune.tasks.data import Split
from edgeprune.errors import UserError
from edgeprune.progress import PlainProgress, live

# loss(logits, x, y)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# adversary(model, x, y, seed) -> adversarial x (edgeprune.problem.robustness: PGD)
Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def correct_count(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Inputs of ``(x, y)`` batches whose top-1 prediction is right; the model's train/eval flag is kept."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for x, y in batches:
                correct += int((model(x).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return correct


def evaluate(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``split`` in [0, 1]; the model's train/eval flag is kept."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    return correct_count(model, split.batches(batch_size)) / len(split)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up (large first steps wreck BN statistics of a freshly pruned model), then a
    cosine decay to zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    model: nn.Module,
    split: Split,
    epochs: float,
    *,
    lr: float = 0.05,
    batch_size: int = 128,
    weight_decay: float = 4e-5,
    seed: int = 0,
    warmup: bool = True,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.5,
    kd_temperature: float = 4.0,
    progress: bool | Progress = True,
    description: str = "train",
    adversary: Adversary | None = None,
    adv_ratio: float = 0.5,
) -> dict:
    """Train ``model`` in place with SGD (Nesterov momentum 0.9) and a per-step cosine schedule.

    ``epochs`` may be fractional: 0.25 trains a quarter of one epoch's steps, which is how a
    search affords a short tune per candidate. Each epoch draws a seeded shuffle of whole batches
    (a ragged last batch of one would break BatchNorm). With ``teacher`` the loss is
    ``(1 - kd_alpha) * CE + kd_alpha * T^2 * KL(p_teacher || p_student)`` at temperature T
    (Hinton et al.; the T^2 keeps the soft term's gradient scale independent of T).
    ``progress`` is True for a bar of our own on stderr, False for none, or a rich ``Progress``
    to add a task to. With ``adversary`` (adversarial training, Madry et al.), the first
    ``adv_ratio`` of every batch is replaced by its adversarial version against the model as it
    is at that step; the rest stays clean. Returns ``{"steps", "final_loss", "seconds"}`` where ``final_loss`` is an
    exponential moving average (0.9) of the step losses; the model is left in eval mode.
    """
    per_epoch = max(1, len(split) // batch_size)
    items = per_epoch * batch_size if len(split) >= batch_size else len(split)
    total = max(1, round(epochs * per_epoch))
    warmup_steps = min(100, total // 10) if warmup else 0
    optimizer, schedule = _sgd(model, lr, weight_decay, total, warmup_steps)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    with _step_bar(progress, description, total) as advance:
        start = time.perf_counter()
        _train_mode(model)
        try:
            step, ema = _run_steps(
                model, split, optimizer, schedule, _loss_fn(teacher, kd_alpha, kd_temperature),
                total=total, batch_size=batch_size, items=items, seed=seed, lr=lr, advance=advance,
                adversary=adversary, adv_ratio=adv_ratio,
            )
        finally:
            model.eval()
            if teacher is not None:
                teacher.train(teacher_was_training)
    return {"steps": step, "final_loss": ema, "seconds": time.perf_counter() - start}


@contextmanager
def _step_bar(progress: bool | Progress, description: str, total: int) -> Iterator[Callable[[float], None] | None]:
    """What each training step calls with its smoothed loss: a bar of our own (``progress`` True,
    stopped on the way out), a task on the caller's ``Progress`` (rich's or the plain one), or
    nothing (False)."""
    own_bar = progress is True
    bar = _new_progress() if own_bar else (progress if hasattr(progress, "add_task") else None)
    if bar is None:
        yield None
        return
    task = bar.add_task(description, total=total, loss=float("nan"))
    if own_bar:
        bar.start()
    try:
        yield lambda ema: bar.update(task, advance=1, loss=ema)
    finally:
        if own_bar:
            bar.stop()


def _train_mode(model: nn.Module) -> None:
    """Train mode, except the BatchNorm layers of frozen parts (a transfer's backbone): their
    affine parameters do not train, and their statistics must not move either."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and not m.weight.requires_grad:
            m.eval()


def _sgd(
    model: nn.Module, lr: float, weight_decay: float, total: int, warmup_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """Nesterov SGD over the trainable parameters, with the per-step warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, warmup_steps))
    return optimizer, schedule


def _loss_fn(teacher: nn.Module | None, kd_alpha: float, kd_temperature: float) -> LossFn:
    """``loss(logits, x, y)``: cross-entropy, blended with the distillation term given a teacher."""

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y)
        if teacher is None:
            return ce
        with torch.no_grad():
            soft = F.softmax(teacher(x) / kd_temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / kd_temperature, dim=1), soft, reduction="batchmean")
        return (1 - kd_alpha) * ce + kd_alpha * kd_temperature**2 * kd

    return loss


def _run_steps(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    loss_fn: LossFn,
    *,
    total: int,
    batch_size: int,
    items: int,
    seed: int,
    lr: float,
    advance: Callable[[float], None] | None,
    adversary: Adversary | None = None,
    adv_ratio: float = 0.5,
) -> tuple[int, float]:
    """Take ``total`` optimizer steps over seeded per-epoch shuffles; returns (steps, EMA loss).

    ``advance(ema)``, when given, is called after every step.
    """
    step, ema = 0, None
    # Dropout and friends draw from the global RNG: fork it so a seeded run is repeatable
    # without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        epoch = 0
        while step < total:
            for x, y in split.batches(batch_size, shuffle=True, seed=seed + epoch, limit=items):
                if adversary is not None and adv_ratio > 0:
                    k = max(1, round(adv_ratio * len(y)))
                    x = torch.cat([adversary(model, x[:k], y[:k], seed * 1_000_003 + step), x[k:]])
                    model.train()
                loss = loss_fn(model(x), x, y)
                if not torch.isfinite(loss):
                    raise UserError(
                        f"training diverged at step {step + 1} of {total} (loss {loss.item()}); "
                        f"lower the learning rate (now {lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
                if advance is not None:
                    advance(ema)
                if step == total:
                    break
            epoch += 1
    return step, ema


def _new_progress() -> Progress | PlainProgress:
    from rich.console import Console

    if not live():
        return PlainProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
