"""Which hls4ml io type a network is lowered with when the user did not say (``io_type: auto``).

The rule: a network with a convolution whose largest feature map (values of any 4-D activation,
C·H·W, input included) exceeds :data:`STREAM_ABOVE` = 1024 values is lowered with ``io_stream``;
every other network with ``io_parallel``.

Why there:
- ``io_parallel`` keeps every feature map as a fully partitioned array, i.e. in registers: at
  8 bits a 1024-value map is already 8 k flip-flops (8 % of an xc7z020) per layer, and resnet8's
  16×32×32 maps are 16 k values each. hls4ml's own guidance is ``io_stream`` for any CNN beyond a
  toy (one pixel per cycle through line buffers); MLPs and tiny CNNs are better served by
  ``io_parallel``'s lower latency.
- It is also what makes the C++ emulation affordable: g++ unrolls io_parallel convolutions over
  every output pixel. resnet8's io_parallel emulation took 467 s to compile on an idle 2-core
  machine, its io_stream one ≈ 60 s even at load average 10 (``bench/scaling.py``).
- digits-cnn (largest map 8·6·6 = 288) stays io_parallel; resnet8 (16·32·32 = 16384) streams.

An explicit ``io_parallel`` or ``io_stream`` is always kept. :func:`choose_io_type` returns the
choice with a one-line reason, which the pipeline prints and records (``run.json``, lower stage:
``io_type`` and ``io_type_reason``; ``hls4ml.json``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IO_TYPES = ("io_parallel", "io_stream")
AUTO = "auto"
#: A CNN whose largest feature map holds more values than this is streamed.
STREAM_ABOVE = 1024


@dataclass(frozen=True)
class IOChoice:
    io_type: str
    reason: str
    largest_feature_map: int = 0  # values (C·H·W) of the largest 4-D activation; 0 without convs

    def to_dict(self) -> dict[str, Any]:
        return {
            "io_type": self.io_type,
            "io_type_reason": self.reason,
            "largest_feature_map": self.largest_feature_map,
        }


def choose_io_type(
    requested: str, has_conv: bool, feature_maps: Sequence[int] = (), threshold: int = STREAM_ABOVE
) -> IOChoice:
    """The io type for a network: ``requested`` unless it is ``"auto"``, then the rule above.
    ``feature_maps`` are the sizes (values per sample) of the network's 4-D activations."""
    largest = max((int(v) for v in feature_maps), default=0)
    if requested in IO_TYPES:
        return IOChoice(requested, f"{requested} as configured (io_type: {requested})", largest)
    if requested != AUTO:
        raise ValueError(f"io_type must be auto, io_parallel or io_stream, got {requested!r}")
    if not has_conv:
        return IOChoice("io_parallel", "auto: no convolution, io_parallel", largest)
    if largest > threshold:
        return IOChoice(
            "io_stream",
            f"auto: CNN with a largest feature map of {largest} values > {threshold}, io_stream "
            "(io_parallel would hold every map in registers and its emulation compiles for minutes)",
            largest,
        )
    return IOChoice(
        "io_parallel",
        f"auto: CNN with a largest feature map of {largest} values ≤ {threshold}, io_parallel",
        largest,
    )


def network_feature_maps(model: Any, input_shape: Sequence[int]) -> tuple[bool, list[int]]:
    """``(has_conv, sizes)`` of a torch network: whether it has a ``Conv1d/2d`` layer and the
    values per sample of every 4-D (or 3-D) activation of one forward pass on zeros, input
    included."""
    import torch
    from torch import nn

    has_conv = any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules())
    shape = tuple(int(d) for d in input_shape)
    sizes = [math.prod(shape)] if len(shape) >= 2 else []
    hooks = []

    def record(_m: Any, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 3:
            sizes.append(int(math.prod(out.shape[1:])))

    for m in model.modules():
        if not list(m.children()):  # leaves only
            hooks.append(m.register_forward_hook(record))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape)))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return has_conv, sizes


def io_choice_for(model: Any, input_shape: Sequence[int], requested: str) -> IOChoice:
    """:func:`choose_io_type` for a torch network (explicit choices skip the forward pass)."""
    if requested in IO_TYPES:
        return choose_io_type(requested, False)
    try:
        has_conv, sizes = network_feature_maps(model, input_shape)
    except Exception as e:  # a network that cannot run on zeros: hls4ml's default
        return IOChoice(
            "io_parallel",
            f"auto: feature maps unknown ({e.__class__.__name__}: {e}), io_parallel",
        )
    return choose_io_type(requested, has_conv, sizes)
