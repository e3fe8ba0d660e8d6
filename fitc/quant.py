"""Quantization helpers shared by the build and the fine-tuning: one module, importing neither.

Contract:
- :func:`fixed_point_quantize` is Brevitas' ``Int8WeightPerTensorFixedPoint`` bit for bit.
- :func:`quant_layers`, :func:`int_weight`, :func:`weight_scale` read a built (Brevitas) model's
  quantized layers, their integer weights and power-of-two scales.
- :func:`calibrate` initialises activation scales (Brevitas calibration mode),
  :func:`is_calibrated` tells whether it has run; :func:`predict` / :func:`evaluate_quant` run a
  built model in eval mode (restoring its training flag).
- :func:`out_positions` counts each layer's output positions with one forward pass.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "calibrate",
    "evaluate_quant",
    "fixed_point_quantize",
    "int_weight",
    "is_calibrated",
    "out_positions",
    "predict",
    "quant_layers",
    "weight_scale",
]


def fixed_point_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brevitas' ``Int8WeightPerTensorFixedPoint`` at ``weight_bit_width=bits``, bit for bit.

    Returns ``(q, scale)`` with ``w ≈ q · scale``:
    ``scale = 2^ceil(log2(max|w| / 2^(b-1)))`` and
    ``q = clamp(round_half_even(w / scale), -(2^(b-1) - 1), 2^(b-1) - 1)``.
    Note the divisor is ``2^(b-1)`` (Brevitas' ``PowerOfTwoIntScaling``), not ``2^(b-1) - 1``: the
    largest weight can land on ``2^(b-1)`` and be clipped to ``2^(b-1) - 1``. ``q`` is float32
    holding integers; computed in float32 like Brevitas (scale floored at 1e-10 for all-zero w).
    """
    w = w.detach().to(torch.float32)
    m = w.abs().max().clamp_min(1e-10)
    scale = torch.exp2(torch.ceil(torch.log2(m / 2.0 ** (bits - 1))))
    qmax = 2.0 ** (bits - 1) - 1
    q = torch.clamp(torch.round(w / scale), -qmax, qmax)
    return q, scale


def quant_layers(qmodel: nn.Module) -> dict[str, nn.Module]:
    """The built model's quantized Linear/Conv2d layers by qualified name."""
    from brevitas.nn import QuantConv2d, QuantLinear

    return {n: m for n, m in qmodel.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))}


def int_weight(layer: nn.Module) -> torch.Tensor:
    """The integer weights the layer computes with (as the exported graph stores them)."""
    with torch.no_grad():
        return layer.quant_weight().int().detach()


def weight_scale(layer: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return layer.quant_weight().scale.detach()


def out_positions(
    model: nn.Module, layers: dict[str, nn.Module], input_shape: tuple[int, ...]
) -> dict[str, int]:
    seen: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(
                name, int(np.prod(out.shape[2:])) if out.dim() > 2 else 1
            )
        )
        for name, m in layers.items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def is_calibrated(qmodel: nn.Module) -> bool:
    """Whether every activation quantizer has finished collecting its statistics."""
    for m in qmodel.modules():
        if hasattr(m, "collect_stats_steps") and hasattr(m, "counter"):
            if int(m.counter) <= int(m.collect_stats_steps):
                return False
    return True


def calibrate(
    qmodel: nn.Module,
    X: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 256,
    n_batches: int | None = 8,
) -> nn.Module:
    """Initialise the activation scales from the float activations of up to ``n_batches`` batches
    of ``X`` (Brevitas ``calibration_mode``: 99.999th percentile, averaged over batches).

    Deterministic (batches are taken in order). Returns ``qmodel`` in eval mode.
    """
    from brevitas.graph.calibrate import calibration_mode

    X = torch.as_tensor(X, dtype=torch.float32)
    if len(X) == 0:
        raise ValueError("calibrate: X is empty")
    batches = list(torch.split(X, batch_size))
    if n_batches is not None:
        batches = batches[:n_batches]
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for xb in batches:
            qmodel(xb)
    qmodel.eval()
    log.debug("calibrated activation scales on %d samples", sum(len(b) for b in batches))
    return qmodel


@torch.no_grad()
def predict(qmodel: nn.Module, X: torch.Tensor | np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Outputs of ``qmodel`` in eval mode (the training flag is restored)."""
    X = torch.as_tensor(X, dtype=torch.float32)
    was_training = qmodel.training
    qmodel.eval()
    try:
        outs = [_value(qmodel(xb)) for xb in torch.split(X, batch_size)]
    finally:
        qmodel.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def _value(out: Any) -> torch.Tensor:
    return out.value if hasattr(out, "value") else out


def evaluate_quant(
    qmodel: nn.Module,
    X: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    batch_size: int = 512,
) -> float:
    """Classification accuracy of ``qmodel`` on ``(X, y)`` in [0, 1]."""
    y = torch.as_tensor(y)
    if len(y) == 0:
        return 0.0
    pred = predict(qmodel, X, batch_size).argmax(dim=1)
    return float((pred == y).float().mean().item())
