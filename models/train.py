"""Float training and evaluation.

Contract:
- ``train_float`` trains ``model`` in place on ``data.X_train`` with Adam (learning rate ``lr``
  decayed to zero on a cosine schedule over all steps) and label-smoothed cross-entropy, keeps the
  weights of the epoch with the best validation accuracy (lower validation loss, then the earlier
  epoch, on ties) and returns the metrics of those weights.
- It is deterministic on CPU: the same model initialisation, data, hyper-parameters and ``seed`` give
  bit-identical weights (``torch.manual_seed(seed)`` plus a dedicated generator for the shuffling).
- A tqdm bar over epochs shows loss and accuracies (``progress=False`` hides it).
- ``evaluate`` returns the top-1 accuracy in [0, 1] of a model on arrays; it leaves the model in
  eval mode and does not track gradients.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fitc.errors import ConfigError, DataError

from .data import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LABEL_SMOOTHING",
    "DEFAULT_LR",
    "evaluate",
    "train_float",
]

DEFAULT_EPOCHS = 40
DEFAULT_LR = 3e-3
DEFAULT_BATCH_SIZE = 64
DEFAULT_LABEL_SMOOTHING = 0.1
_SMALL_INPUT = 1024


@torch.no_grad()
def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on inputs ``X`` (N, ...) and integer labels ``y`` (N,)."""
    if len(X) != len(y):
        raise DataError(f"evaluate: {len(X)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise DataError("evaluate: no samples to evaluate")
    model.eval()
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    correct = 0
    for start in range(0, len(y), batch_size):
        xb = torch.as_tensor(np.asarray(X[start : start + batch_size]), dtype=torch.float32)
        pred = model(xb).argmax(dim=1)
        correct += int((pred == labels[start : start + batch_size]).sum())
    return correct / len(y)


def train_float(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; return ``float_{train,val,test}_accuracy``, ``epochs``, ``best_epoch``.

    The returned accuracies are those of the kept (best-validation) weights. ``num_threads`` sets
    torch's intra-op threads while training (restored afterwards); None picks 1 for small inputs
    (≤ 1024 values per sample), whose tiny matrix products only lose time to thread
    synchronisation — 20× slower on a loaded 2-core machine — and leaves torch's setting otherwise.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"train epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ConfigError(f"train learning rate must be positive, got {lr!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing!r}")

    if num_threads is None:
        num_threads = 1 if int(np.prod(data.X_train.shape[1:])) <= _SMALL_INPUT else None
    with _intra_op_threads(num_threads):
        return _train(model, data, epochs, lr, batch_size, seed, progress, label_smoothing)


@contextlib.contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool,
    label_smoothing: float,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # the shuffling order depends on ``seed`` only
    X_train = torch.as_tensor(data.X_train, dtype=torch.float32)
    y_train = torch.as_tensor(data.y_train, dtype=torch.int64)
    X_val = torch.as_tensor(data.X_val, dtype=torch.float32)
    y_val = torch.as_tensor(data.y_val, dtype=torch.int64)
    n = len(y_train)
    steps_per_epoch = -(-n // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay to zero over all steps: the last epochs refine instead of bouncing around.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    best_key: tuple[float, float] | None = None
    best_epoch = 0
    best_state = copy.deepcopy(model.state_dict())
    t0 = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total_loss, total_correct = 0.0, 0
        # Index batches directly (no DataLoader): same seeded shuffling, far less per-sample overhead.
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = X_train[idx], y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(yb)
            total_correct += int((out.argmax(dim=1) == yb).sum())
        model.eval()
        with torch.no_grad():
            val_out = model(X_val)
            val_acc = float((val_out.argmax(dim=1) == y_val).float().mean())
            val_loss = float(nn.functional.cross_entropy(val_out, y_val))
        key = (val_acc, -val_loss)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(
            OrderedDict(
                loss=f"{total_loss / n:.4f}",
                acc=f"{total_correct / n:.3f}",
                val=f"{val_acc:.3f}",
                best=f"{best_key[0]:.3f}",
            )
        )
        log.debug(
            "epoch %d: loss %.4f acc %.4f val acc %.4f val loss %.4f",
            epoch,
            total_loss / n,
            total_correct / n,
            val_acc,
            val_loss,
        )
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "float_train_accuracy": evaluate(model, data.X_train, data.y_train),
        "float_val_accuracy": evaluate(model, data.X_val, data.y_val),
        "float_test_accuracy": evaluate(model, data.X_test, data.y_test),
        "epochs": epochs,
        "best_epoch": best_epoch,
    }
    log.info(
        "float training: %d epochs in %.1f s, best val %.4f at epoch %d, test %.4f",
        epochs,
        time.perf_counter() - t0,
        metrics["float_val_accuracy"],
        best_epoch,
        metrics["float_test_accuracy"],
    )
    return metrics
