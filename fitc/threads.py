"""Threads: how many torch uses, and that idle OpenMP threads sleep instead of spinning.

Why: torch's CPU kernels run on an OpenMP pool with one thread per core, and GNU OpenMP's idle
threads busy-wait (spin) before they sleep. Alone on a machine that is the fastest setting; as soon
as the cores are shared (a sweep's workers, other jobs) every process's spinning threads steal the
cores the others compute on. Measured on 2 shared cores at load average ≈ 9 (resnet8 training
steps, 640 samples): 2 threads spinning 14.1 s, 2 threads with ``OMP_WAIT_POLICY=PASSIVE`` 4.4 s,
1 thread 3.8–4.4 s (see ``bench/scaling.py --threads``).

Contract:
- :func:`quiet_openmp_env` sets ``OMP_WAIT_POLICY=PASSIVE`` (and ``KMP_BLOCKTIME=0`` for Intel's
  runtime) in ``os.environ`` unless the user set them. OpenMP reads them once, when the runtime is
  loaded, i.e. at ``import torch``: ``import fitc`` calls it, so it is in place for the CLI, for
  sweep workers (``python -m fitc.sweep``) and for any program that imports fitc before torch.
  It returns False when torch was imported first (then it cannot act; nothing else breaks).
- :func:`worker_threads` is the intra-op thread count of one sweep worker: ``OMP_NUM_THREADS``
  when set (the local sweep runner gives each worker its share of the cores), else 1. A sweep
  scales by workers; one thread per worker never oversubscribes the cores.
- :func:`pin_threads` sets torch's intra-op threads (and, where torch still allows it, its
  inter-op threads) and returns what it set; :func:`thread_info` describes the setting for
  run.json and logs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

#: What fitc sets unless the user did: sleeping, not spinning, idle OpenMP threads.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def quiet_openmp_env() -> bool:
    """Set :data:`OPENMP_ENV` in ``os.environ`` where the user has not; True if torch is not
    loaded yet (so OpenMP will read them), False if it is too late for this process (child
    processes still inherit them)."""
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)
    return "torch" not in sys.modules


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads() -> int:
    """Intra-op threads of one sweep worker: ``OMP_NUM_THREADS`` if set (a positive integer),
    else 1."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value)
    except ValueError:
        return 1
    return n if n >= 1 else 1


def pin_threads(intra_op: int, inter_op: int | None = 1) -> dict[str, Any]:
    """Set torch's intra-op threads to ``intra_op`` and, if torch still allows it (before any
    inter-op work ran in this process), its inter-op threads to ``inter_op`` (None: unchanged).
    Returns :func:`thread_info`."""
    import torch

    if intra_op < 1:
        raise ValueError(f"intra_op threads must be ≥ 1, got {intra_op}")
    torch.set_num_threads(int(intra_op))
    if inter_op is not None and torch.get_num_interop_threads() != inter_op:
        try:
            torch.set_num_interop_threads(int(inter_op))
        except RuntimeError:  # set once per process, before the pool starts
            log.debug("torch inter-op threads already started; left at %d",
                      torch.get_num_interop_threads())  # fmt: skip
    info = thread_info()
    log.info("torch threads: %d intra-op, %d inter-op, OMP_WAIT_POLICY=%s",
             info["intra_op"], info["inter_op"], info["omp_wait_policy"])  # fmt: skip
    return info


def thread_info() -> dict[str, Any]:
    """The thread setting of this process (for run.json and logs)."""
    import torch

    return {
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "cores": available_cores(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }
