"""Quantization-aware fine-tuning of a built plan with its pruning support fixed.

Contract (:func:`finetune`):

- trains the Brevitas model from :func:`fitc.build.apply_plan` (started from the float weights)
  with straight-through quantizers, cross-entropy, Adam or SGD (momentum 0.9, Nesterov), a cosine
  or constant learning rate stepped per batch, for ``epochs`` epochs; the activation scales are
  calibrated first if they are not yet (:func:`fitc.quant.calibrate`);
- the support is fixed: a weight that is zero in the built model's *integer* weights (pruned by
  the mask, or a kept weight that already quantized to zero, which the plan counted as zero) gets no
  gradient and is reset to exactly zero after every optimizer step; a weight in the support that
  would round to zero at the layer's current scale is moved to just above half a step, keeping its
  sign. So every forward pass has exactly the plan's non-zero count in every layer, and the size and
  BOPs measured on the fine-tuned model equal the plan's;
- with ``regrow`` > 0, and when the pruned layers keep at most ``REGROW_MAX_DENSITY`` of their
  weights, the support moves while the count stays (prune and regrow, as in RigL):
  after each of the first ``REGROW_UNTIL`` of the epochs, in every layer with pruned weights, the
  ``f·n`` support weights of smallest magnitude leave the support and as many pruned weights with
  the largest epoch-mean gradient join it (set to the smallest non-zero step, against the
  gradient; their optimizer state reset), ``f`` decaying from ``regrow`` to 0 on a half cosine.
  Every layer keeps exactly its non-zero count, so size and BOPs stay the plan's; the final
  support is the fine-tuned model's non-zero integer weights (the pipeline stores it in model.pt);
- with a ``teacher`` (the float model) and ``distill`` > 0, and when the plan is not sparse in
  the sense above (the pruned layers keep more than ``REGROW_MAX_DENSITY`` of their weights, or
  nothing is pruned), the loss is knowledge distillation (Hinton et al. 2015):
  ``(1 - distill)·CE(y) + distill·T²·KL(softmax(teacher/T) ‖ softmax(out/T))`` at temperature
  ``T = DISTILL_T``; the teacher's outputs are computed once, in eval mode. Sparse plans train on
  the labels alone: there the student is too far from the teacher to follow its soft targets;
- the epoch with the best validation accuracy (epoch 0 = the calibrated model before training, so
  fine-tuning never makes it worse on validation) is restored at the end; the model is left in
  eval mode;
- deterministic for a given ``seed`` (CPU), with a tqdm progress bar (``progress=False`` hides it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fitc.errors import ConfigError
from fitc.quant import (
    calibrate,
    evaluate_quant,
    fixed_point_quantize,
    int_weight,
    is_calibrated,
    out_positions,
    quant_layers,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "none")

# A support weight that would round to 0 is set to this many quantization steps (rounds to ±1).
_MIN_STEPS = 0.5 + 2.0**-10
#: Regrowth happens after each of the first this fraction of the epochs (then the support is fixed).
REGROW_UNTIL = 0.75
#: Regrowth runs only when the pruned layers keep at most this share of their weights together:
#: it moved digits-cnn at size 1/64 (85 % sparse) from 89.97 to 92.66 % (mean of 3 seeds) but cost
#: digits-mlp 0.7–0.8 points at 1/16 and 1/32 (45–75 % sparse), where the searched support is
#: already good and moving 30 % of it only disturbs the fine-tuning.
REGROW_MAX_DENSITY = 0.2
#: Distillation temperature: soft targets at T = 4 carry the float model's ranking of the wrong
#: classes, which a quantized student can still match. Distillation is for plans that are not
#: sparse (above). At size 1/16 (45–75 % sparse) a weight of 0.15 lifted digits-mlp from 97.12 to
#: 97.77 % (3 seeds), and digits-cnn at 1/32 from 95.82 to 96.75 %, where 0.3 cost it 0.65 points;
#: at 1/64 (≥ 85 % sparse, where regrowth runs) a weight of 0.5 cost 1.0 point on digits-mlp and
#: 2.8 on digits-cnn (seed 0). The pipeline's default weight is 0.15 (``RunConfig.distill``).
DISTILL_T = 4.0


def support_of(qmodel: nn.Module, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Per layer, the weights that are non-zero in the model's integer weights and kept by the mask."""
    out = {}
    for name, layer in quant_layers(qmodel).items():
        s = int_weight(layer) != 0
        if masks and name in masks:
            s = s & masks[name].to(torch.bool)
        out[name] = s
    return out


@torch.no_grad()
def project_support(qmodel: nn.Module, support: dict[str, torch.Tensor]) -> None:
    """Zero the weights outside ``support``; lift support weights that would quantize to zero."""
    layers = quant_layers(qmodel)
    for name, s in support.items():
        w = layers[name].weight
        w.mul_(s.to(w.dtype))
        _, scale = fixed_point_quantize(w, int(layers[name].weight_quant.bit_width().item()))
        small = s & (torch.round(w / scale) == 0)
        if bool(small.any()):
            sign = torch.where(w >= 0, 1.0, -1.0)
            w.copy_(torch.where(small, sign * scale * _MIN_STEPS, w))


@torch.no_grad()
def regrow_support(
    qmodel: nn.Module,
    support: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    frac: float,
    opt: torch.optim.Optimizer | None = None,
) -> int:
    """Move ``frac`` of every layer's support (in place): drop the smallest-|w| support weights,
    grow as many pruned weights with the largest |gradient| (``grads``, dense) at the smallest
    non-zero step against the gradient, and reset their optimizer state. Counts are kept exactly;
    ties break by position (deterministic). Returns how many weights moved in all."""
    layers = quant_layers(qmodel)
    moved = 0
    for name, s in support.items():
        g = grads.get(name)
        if g is None:
            continue
        flat_s = s.view(-1)
        active = flat_s.nonzero().squeeze(1)
        pruned = (~flat_s).nonzero().squeeze(1)
        gp = g.view(-1)[pruned].abs()
        k = min(int(frac * len(active)), int((gp > 0).sum()))
        if k < 1:
            continue
        w = layers[name].weight
        flat_w = w.view(-1)
        drop = active[torch.argsort(flat_w[active].abs(), stable=True)[:k]]
        grow = pruned[torch.argsort(gp, descending=True, stable=True)[:k]]
        _, scale = fixed_point_quantize(w, int(layers[name].weight_quant.bit_width().item()))
        flat_w[drop] = 0.0
        flat_w[grow] = -torch.sign(g.view(-1)[grow]) * scale * _MIN_STEPS
        flat_s[drop] = False
        flat_s[grow] = True
        state = opt.state.get(w, {}) if opt is not None else {}
        for v in state.values():
            if torch.is_tensor(v) and v.shape == w.shape:
                v.view(-1)[drop] = 0
                v.view(-1)[grow] = 0
        moved += k
    project_support(qmodel, support)
    return moved


def finetune(
    qmodel: nn.Module,
    masks: dict[str, torch.Tensor] | None,
    data: Any,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    optimizer: str = "adam",
    schedule: str = "cosine",
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    num_threads: int | None = None,
    regrow: float = 0.0,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
) -> dict[str, Any]:
    """Fine-tune ``qmodel`` in place on ``data`` (a :class:`fitc.models.Dataset`); return metrics.

    Metrics: ``built_val_accuracy`` (epoch 0), ``finetune_val_accuracy`` (best epoch),
    ``finetune_best_epoch``, ``finetune_epochs``, ``finetune_time_s``, ``finetune_val_history``.
    ``num_threads`` sets torch's intra-op threads while training (restored after); None picks 1
    for small models (< 1M multiply-accumulates per sample), where thread hand-offs cost more than
    they save, and leaves torch's setting otherwise.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer={optimizer!r} is not valid; choose one of {', '.join(OPTIMIZERS)}"
        )
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"schedule={schedule!r} is not valid; choose one of {', '.join(SCHEDULES)}"
        )
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ConfigError(f"finetune epochs must be an integer ≥ 0, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"finetune lr must be a finite number > 0, got {lr!r}")
    if not (0.0 <= regrow < 1.0):
        raise ConfigError(f"regrow must be a fraction in [0, 1), got {regrow!r}")
    if not (0.0 <= distill <= 1.0):
        raise ConfigError(f"distill must be a weight in [0, 1], got {distill!r}")
    if distill > 0 and teacher is None:
        raise ConfigError("distill > 0 needs a teacher (the float model) to distill from")
    if num_threads is None:
        num_threads = 1 if _macs_per_sample(qmodel, data) < 1_000_000 else torch.get_num_threads()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _finetune(
            qmodel,
            masks,
            data,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            schedule=schedule,
            batch_size=batch_size,
            weight_decay=weight_decay,
            seed=seed,
            progress=progress,
            regrow=regrow,
            teacher=teacher if distill > 0 else None,
            distill=distill,
        )
    finally:
        torch.set_num_threads(saved_threads)


def _macs_per_sample(qmodel: nn.Module, data: Any) -> int:
    layers = quant_layers(qmodel)
    pos = out_positions(qmodel, layers, tuple(np.asarray(data.X_train).shape[1:]))
    return sum(m.weight.numel() * pos.get(n, 1) for n, m in layers.items())


@torch.no_grad()
def _teacher_probs(teacher: nn.Module, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The teacher's soft targets ``softmax(logits / DISTILL_T)`` on ``X``, in eval mode."""
    was_training = teacher.training
    teacher.eval()
    try:
        logits = torch.cat([teacher(xb) for xb in torch.split(X, max(256, batch_size))])
    finally:
        teacher.train(was_training)
    return torch.softmax(logits.float() / DISTILL_T, dim=1)


def _finetune(
    qmodel: nn.Module,
    masks: dict[str, torch.Tensor] | None,
    data: Any,
    *,
    epochs: int,
    lr: float,
    optimizer: str,
    schedule: str,
    batch_size: int,
    weight_decay: float,
    seed: int,
    progress: bool,
    regrow: float = 0.0,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    X = torch.as_tensor(np.asarray(data.X_train), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(data.y_train), dtype=torch.long)
    X_val, y_val = data.X_val, data.y_val
    if len(y_val) == 0:  # no validation split: select on the training set
        X_val, y_val = data.X_train, data.y_train

    if not is_calibrated(qmodel):
        log.info("activation scales not calibrated yet: calibrating on the training set")
        calibrate(qmodel, X)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    support = support_of(qmodel, masks)
    project_support(qmodel, support)
    layers = quant_layers(qmodel)

    params = [p for p in qmodel.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(X) / batch_size))
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
        if schedule == "cosine"
        else None
    )
    loss_fn = nn.CrossEntropyLoss()

    pruned = {n: s for n, s in support.items() if masks and n in masks and not bool(s.all())}
    kept = sum(int(s.sum()) for s in pruned.values()) / max(
        1, sum(s.numel() for s in pruned.values())
    )
    sparse = bool(pruned) and kept <= REGROW_MAX_DENSITY
    regrow_epochs = int(REGROW_UNTIL * epochs) if regrow > 0 and sparse else 0
    soft = _teacher_probs(teacher, X, batch_size) if teacher is not None and not sparse else None
    grads = {n: torch.zeros_like(layers[n].weight) for n in pruned} if regrow_epochs else {}
    moved = 0

    best_acc = evaluate_quant(qmodel, X_val, y_val)
    built_acc = best_acc
    best_state = copy.deepcopy(qmodel.state_dict())
    best_epoch = 0
    history = [best_acc]
    bar = tqdm(range(1, epochs + 1), desc="fine-tune", unit="epoch", disable=not progress)
    for epoch in bar:
        qmodel.train()
        perm = torch.randperm(len(X), generator=gen)
        total = 0.0
        for idx in torch.split(perm, batch_size):
            out = qmodel(X[idx])
            out = out.value if hasattr(out, "value") else out
            loss = loss_fn(out, y[idx])
            if soft is not None:
                kd = nn.functional.kl_div(
                    nn.functional.log_softmax(out / DISTILL_T, dim=1), soft[idx],
                    reduction="batchmean",
                )  # fmt: skip
                loss = (1.0 - distill) * loss + distill * DISTILL_T**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, s in support.items():
                g = layers[name].weight.grad
                if g is not None:
                    if name in grads:
                        grads[name].add_(g)  # the dense gradient, for regrowth
                    g.mul_(s.to(g.dtype))
            opt.step()
            if sched is not None:
                sched.step()
            project_support(qmodel, support)
            total += float(loss.detach()) * len(idx)
        if epoch <= regrow_epochs:
            frac = regrow * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / regrow_epochs))
            moved += regrow_support(qmodel, support, grads, frac, opt)
            if epoch == regrow_epochs:
                grads = {}
            for g in grads.values():
                g.zero_()
        acc = evaluate_quant(qmodel, X_val, y_val)
        history.append(acc)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = copy.deepcopy(qmodel.state_dict())
        bar.set_postfix(loss=f"{total / len(X):.4f}", val=f"{acc:.4f}", best=f"{best_acc:.4f}")
    qmodel.load_state_dict(best_state)
    qmodel.eval()
    wall = time.perf_counter() - t0
    log.info(
        "fine-tuned %d epochs in %.1f s: val accuracy %.4f → %.4f (best epoch %d)",
        epochs,
        wall,
        built_acc,
        best_acc,
        best_epoch,
    )
    return {
        "built_val_accuracy": built_acc,
        "finetune_val_accuracy": best_acc,
        "finetune_best_epoch": best_epoch,
        "finetune_epochs": epochs,
        "finetune_time_s": round(wall, 3),
        "finetune_val_history": history,
        **({"finetune_regrown": moved} if regrow_epochs else {}),
        **({"finetune_distill": distill} if soft is not None else {}),
    }


__all__ = ["OPTIMIZERS", "SCHEDULES", "finetune", "project_support", "support_of"]
