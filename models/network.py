"""A network and its data, matched: what the pipeline compresses, on which inputs.

Contract:
- :func:`open_network` resolves a :class:`~fitc.models.source.ModelSource` and its data into a
  :class:`Network` and a :class:`~fitc.models.data.Dataset`:

  * zoo models keep their own input shape and classes (the data must match them);
  * every other model is sized by the data: the input shape is the data's per-sample shape, the
    classes the model's number of outputs (at least the labels' range). One forward pass checks
    that the model takes the data; if not, :class:`~fitc.errors.DataError` shows the data's shape,
    what the model's first layer expects and the model's own error.
  * the network is checked and compiled (:func:`~fitc.models.prepare.compile_float`) before any
    work: unsupported layers fail here. The returned dataset is shaped for the *compiled* network
    (a 1-D network's ``(N, C, L)`` becomes ``(N, C, 1, L)``); :meth:`Network.user_view` gives the
    data in the user's own shape (for training the network as written).
- :meth:`Network.fresh` builds the user's network (seeded); :meth:`Network.compile` turns a trained
  one into the network fitc compresses; :attr:`Network.spec` describes the compiled network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fitc.errors import ArtifactError, DataError

from .data import Dataset, load_data
from .prepare import Compiled, compile_float, for_training
from .source import DEFAULT_HIDDEN, ModelSource
from .zoo import MODELS, ModelSpec

__all__ = ["Network", "open_network"]

_GENERIC_DEFAULT_DATA = "digits"


@dataclass(frozen=True)
class Network:
    """A resolved network: where it comes from, the shapes it takes, how it is compiled."""

    source: ModelSource
    spec: ModelSpec  # the compiled network: its input shape (no batch) and number of classes
    user_input_shape: tuple[int, ...]  # the input shape of the network as the user wrote it
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    changes: tuple[str, ...] = ()

    def fresh(self, seed: int = 0) -> nn.Module:
        """The user's network, freshly initialised from ``seed`` (eval mode)."""
        return self.source.build(
            seed,
            input_shape=self.user_input_shape,
            num_classes=self.spec.num_classes,
            hidden=self.hidden,
        )

    def trainable(self, seed: int = 0) -> nn.Module:
        """:meth:`fresh` without a trailing softmax (fitc trains on logits)."""
        return for_training(self.fresh(seed))

    def compile(self, model: nn.Module) -> nn.Module:
        return compile_float(model, self.user_input_shape).model

    def compiled_fresh(self, seed: int = 0) -> nn.Module:
        """The compiled network's structure (weights from ``seed``; load ``float.pt`` into it)."""
        return self.compile(self.fresh(seed))

    def check_buildable(self, seed: int = 0) -> None:
        """Build the compiled network once at 8 bits: a graph fitc cannot build fails now,
        before any training."""
        from fitc.build import apply_plan, make_plan

        model = self.compiled_fresh(seed)
        plan = make_plan(model, model_name=self.spec.name, input_shape=self.spec.input_shape)
        apply_plan(model, plan, None)

    def compile_checked(self, model: nn.Module, user_data: Dataset) -> nn.Module:
        """:meth:`compile`, checked on ``user_data``'s test inputs to compute what ``model`` does
        (the same argmax when a softmax was dropped, outputs within 1e-4 relative otherwise)."""
        compiled = self.compile(model)
        if not self.changes:
            return compiled
        X = torch.from_numpy(user_data.X_test[:512])
        with torch.no_grad():
            want = model.eval()(X)
            got = compiled.eval()(X.reshape(len(X), *self.spec.input_shape))
        if any("softmax" in c for c in self.changes):  # the compiled network outputs logits
            err = 0.0 if float((want.argmax(1) == got.argmax(1)).float().mean()) >= 0.999 else 1.0
        else:
            err = float((want - got).abs().max()) / (float(want.abs().max()) or 1.0)
        if not np.isfinite(err) or err > 1e-4:
            raise ArtifactError(
                f"compiling {self.source.ref} ({'; '.join(self.changes)}) changed its outputs "
                f"(relative max |diff| {err:.3g}); please report this model"
            )
        return compiled

    def user_view(self, data: Dataset) -> Dataset:
        """``data`` reshaped to the user's input shape (the same arrays for 2-D networks)."""
        if tuple(data.input_shape) == self.user_input_shape:
            return data
        shape = self.user_input_shape
        return dataclasses.replace(
            data,
            **{
                f"X_{p}": getattr(data, f"X_{p}").reshape(-1, *shape)
                for p in ("train", "val", "test")
            },
        )


def _first_layer(model: nn.Module) -> str:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            return f"its first layer {name} is Linear(in_features={mod.in_features})"
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return (
                f"its first layer {name} is {type(mod).__name__}(in_channels={mod.in_channels}), "
                f"taking (N, {mod.in_channels}, {'L' if isinstance(mod, nn.Conv1d) else 'H, W'})"
            )
    return "it has no Linear/Conv layer"


def _probe(model: nn.Module, shape: tuple[int, ...], label: str, data_name: str) -> int:
    """Run one batch of zeros through ``model``; its number of outputs per sample."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape))
    except Exception as e:  # the user's model rejected the data's shape
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(
            f"model {label} does not take the data {data_name}: samples have shape "
            f"(N, {', '.join(map(str, shape))}) but {_first_layer(model)} ({msg})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"model {label} must return class scores shaped (N, classes); on the data "
            f"{data_name} it returned {got}"
        )
    return int(out.shape[1])


def open_network(
    source: ModelSource,
    data: str | None,
    seed: int = 0,
    *,
    hidden: tuple[int, ...] = DEFAULT_HIDDEN,
) -> tuple[Network, Dataset]:
    """The network of ``source`` and its validated, split, standardised data (module contract)."""
    if source.zoo:
        spec = MODELS[source.ref]
        dataset = load_data(spec, data, seed=seed)
        model = source.build(seed)
        compiled: Compiled = compile_float(model, spec.input_shape)
        return Network(source, spec, spec.input_shape, hidden, compiled.changes), dataset

    label = source.label
    if data is None and source.kind == "generic":
        data = _GENERIC_DEFAULT_DATA
    dataset = load_data(None, data, seed=seed, name=label)
    shape = tuple(int(d) for d in dataset.input_shape)
    n_labels = dataset.num_classes
    model = source.build(seed, input_shape=shape, num_classes=n_labels, hidden=hidden)
    n_out = _probe(for_training(model), shape, label, dataset.name)
    if n_out < n_labels:
        raise DataError(
            f"model {label} outputs {n_out} class scores but the labels of {dataset.name} go up "
            f"to {n_labels - 1}; make the last layer {n_labels} wide"
        )
    compiled = compile_float(model, shape)
    spec = ModelSpec(
        name=label,
        input_shape=compiled.input_shape,
        num_classes=n_out,
        default_data=data,
        description=f"{source.kind} model {source.ref}",
    )
    if compiled.input_shape != shape:
        dataset = dataclasses.replace(
            dataset,
            **{
                f"X_{p}": np.ascontiguousarray(
                    getattr(dataset, f"X_{p}").reshape(-1, *compiled.input_shape)
                )
                for p in ("train", "val", "test")
            },
        )
    dataset = dataclasses.replace(dataset, num_classes=n_out)
    return Network(source, spec, shape, hidden, compiled.changes), dataset
