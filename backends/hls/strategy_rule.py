"""Which hls4ml strategy a run's firmware uses when the user did not say (``strategy: auto``).

The rule: a run with a hardware budget (LUT, FF, DSP, BRAM or latency, given or from a device
fraction) whose firmware is ``io_parallel`` at reuse factor 1 gets ``distributed_arithmetic``;
every other run gets ``Latency`` (hls4ml's default).

Why there:
- Under a hardware budget the LUTs a weight costs decide how many weights and bits the network
  keeps. hls4ml's distributed arithmetic builds every constant multiply-accumulate as a shared
  adder graph (da4ml), which spends fewer LUTs per non-zero weight than the Latency strategy's
  per-product multipliers, and uses no DSP. On ``python bench/quality.py --models digits-mlp
  --budgets --device xc7z020 --fractions 0.1 0.25 --seeds 0 1 2`` the closed loop reached
  93.13 / 95.73 % test accuracy with it against 90.90 / 94.89 % with Latency firmware.
- Its cost is also the one the loop measures exactly: the da4ml resource model prices DA firmware
  as the adder graph hls4ml generates, where the Latency strategy needs calibrated margins.
- DA kernels are fully parallel (reuse factor 1 only); streamed CNNs keep ``Latency``, whose
  io_stream kernels are the ones this project has checked bit for bit on large CNNs.
- Without a hardware budget nothing asks the firmware to be small: hls4ml's default stays.

An explicit strategy is always kept. :func:`choose_strategy` returns the choice with a one-line
reason, which the pipeline prints and records (``run.json``, lower stage: ``strategy`` and
``strategy_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fitc.artifacts import STRATEGIES

AUTO = "auto"


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "strategy_reason": self.reason}


def choose_strategy(
    requested: str, *, hardware_budget: bool, io_type: str, reuse_factor: int, backend: str
) -> StrategyChoice:
    """The strategy for a run: ``requested`` unless it is ``"auto"``, then the rule above."""
    if backend == "rtl":
        return StrategyChoice("distributed_arithmetic", "rtl backend: da4ml's adder graphs")
    if requested in STRATEGIES:
        return StrategyChoice(requested, "as configured")
    if requested != AUTO:
        raise ValueError(
            f"strategy must be auto or one of {', '.join(STRATEGIES)}, got {requested!r}"
        )
    if not hardware_budget:
        return StrategyChoice("Latency", "auto: no hardware budget, hls4ml's default")
    if io_type != "io_parallel" or reuse_factor != 1:
        return StrategyChoice(
            "Latency",
            f"auto: hardware budget, but {io_type} at reuse factor {reuse_factor}; distributed "
            "arithmetic is chosen only at io_parallel and reuse factor 1",
        )
    return StrategyChoice(
        "distributed_arithmetic",
        "auto: hardware budget at io_parallel and reuse factor 1; adder graphs spend fewer LUTs "
        "per weight than Latency's multipliers, and no DSP",
    )
