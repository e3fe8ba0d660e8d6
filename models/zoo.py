"""The model zoo: named float PyTorch builders with their input shape, task and default data.

Contract:
- ``MODELS`` maps a model name to its :class:`ModelSpec`; ``get_spec`` looks one up and raises
  :class:`~fitc.errors.UnknownModelError` naming the nearest valid name.
- ``build_model(name, seed)`` returns a float ``torch.nn.Module`` whose initial weights depend only on
  ``seed`` (the global torch RNG is left untouched).
- Models are built only from ``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU`` (modules, never functional),
  ``nn.MaxPool2d`` and ``nn.Flatten``; a residual add is a plain ``+`` in a block's ``forward``
  followed by an ``nn.ReLU`` module. Layers have readable qualified names (``fc1``, ``conv2``,
  ``stage2.shortcut``) because every later stage keys its per-layer data by them.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fitc.errors import ConfigError, UnknownModelError

__all__ = ["ModelSpec", "MODELS", "get_spec", "build_model", "ResidualBlock"]


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo entry is: its name, input shape (no batch dim), classes and default dataset.

    ``default_data`` is a built-in dataset name, or None when the user must supply an ``.npz``.
    ``synthetic`` is True when the default data is generated rather than real.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"
    default_data: str | None = None
    synthetic: bool = False
    description: str = ""
    train_epochs: int = 40  # float-training epochs when the user gives none
    finetune_epochs: int = 30  # fine-tuning epochs when the user gives none

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(
                f"model {self.name}: input_shape must be positive ints, got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(
                f"model {self.name}: num_classes must be an int >= 2, got {self.num_classes!r}"
            )
        if self.task != "classification":
            raise ConfigError(f"model {self.name}: task {self.task!r} is not supported")


class ResidualBlock(nn.Module):
    """Basic residual block: conv1 → relu1 → conv2, plus the shortcut, then relu2.

    The shortcut is the identity when shape is kept, else a 1×1 strided ``shortcut`` convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + skip)


def _mlp(sizes: tuple[int, ...]) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n = len(sizes) - 1
    for i in range(n):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < n - 1:
            layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


def _digits_cnn() -> nn.Module:
    # 8×8 → conv 6×6 → conv 4×4 → pool 2×2: 16·2·2 = 64 features.
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 10),
        )
    )


def _resnet8() -> nn.Module:
    # The MLPerf Tiny ResNet-8 shape (16/32/64 channels) without batch norm. Global pooling is a
    # MaxPool2d over the final 8×8 map so the model stays within the supported module set.
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            relu1=nn.ReLU(),
            stage1=ResidualBlock(16, 16, stride=1),
            stage2=ResidualBlock(16, 32, stride=2),
            stage3=ResidualBlock(32, 64, stride=2),
            pool=nn.MaxPool2d(8),
            flatten=nn.Flatten(),
            fc=nn.Linear(64, 10),
        )
    )


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="jet-mlp",
            input_shape=(16,),
            num_classes=5,
            default_data=None,
            description="hls4ml jet-tagging MLP 16→64→32→32→5 (ReLU); needs the jet features as a "
            "user .npz (X: (N, 16), y: (N,) in 0..4 or one-hot (N, 5))",
        ),
        ModelSpec(
            name="digits-mlp",
            input_shape=(64,),
            num_classes=10,
            default_data="digits",
            description="MLP 64→64→32→32→10 (ReLU) on scikit-learn's 8×8 digits (real data)",
        ),
        ModelSpec(
            name="digits-cnn",
            input_shape=(1, 8, 8),
            num_classes=10,
            default_data="digits",
            description="CNN on 1×8×8 digits: two 3×3 convs with ReLU, 2×2 max pool, dense 64→10",
        ),
        ModelSpec(
            name="resnet8",
            input_shape=(3, 32, 32),
            num_classes=10,
            default_data="synthetic-cifar",
            synthetic=True,
            description="ResNet-8 (three residual stages, 16/32/64 channels, no batch norm) on "
            "3×32×32; by default on GENERATED data (synthetic-cifar), for scaling measurements",
            train_epochs=10,
            finetune_epochs=10,  # 30 took 4 min; its best epoch was the 10th (val 98.7 %)
        ),
    )
}

_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "jet-mlp": lambda: _mlp((16, 64, 32, 32, 5)),
    "digits-mlp": lambda: _mlp((64, 64, 32, 32, 10)),
    "digits-cnn": _digits_cnn,
    "resnet8": _resnet8,
}


def get_spec(name: str) -> ModelSpec:
    """The spec of zoo model ``name``; UnknownModelError naming the nearest valid name."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        pass
    valid = sorted(MODELS)
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UnknownModelError(f"unknown model '{name}': {hint}valid models: {', '.join(valid)}")


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised float model; its weights depend only on ``name`` and ``seed``."""
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _BUILDERS[spec.name]()
    return model.eval()
