"""``python -m fitc.sweep worker --storage URL --study NAME``: a sweep worker without the full CLI.

Contract: the entry point of the worker processes :func:`fitc.sweep.run_sweep` spawns (and of
workers started by hand); it parses the ``fitc sweep`` worker options, runs
:func:`fitc.sweep.cli.main` and exits with its status. Only the ``worker`` action is available.
"""

from __future__ import annotations

from fitc.sweep.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
