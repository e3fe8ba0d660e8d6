"""The fitc pipeline, top to bottom.

    train → search → fine-tune → export → verify → lower (hls4ml | RTL [→ Yosys]) → estimate

With a hardware budget (``--budget lut=…``, ``--device xc7z020 --fraction 0.25``) search and
fine-tune become the closed loop: search against the fast (analytical) resource model, build and
fine-tune, measure with the accurate model (da4ml), recalibrate or tighten, repeat until the design
fits (see :mod:`fitc.loop`).

Each stage is a plain function of a :class:`Run` (the config, the run directory and the objects
built so far). ``RunDir.run_stage`` skips a stage whose inputs did not change since it last finished
and whose outputs are still the files it wrote (sha256), so re-running into the same directory
resumes. Objects a skipped stage would have produced are loaded back from its artifacts on first
use, checked against the same sha256. One process writes a run directory at a time, and a run
directory holds one run (model, data, seed): see :mod:`fitc.rundir`.

Artifacts in the run directory:
  float.pt            float weights (state dict)
  plan.json, masks.pt the searched compression plan and its pruning masks
  model.pt            fine-tuned Brevitas weights + masks
  model.qonnx.onnx    the QONNX graph; model.qcdq.onnx its onnxruntime twin (≤ 8 bits)
  equivalence.json    Brevitas ≡ qonnx ≡ onnxruntime, per hop and per layer
  hls4ml/             the hls4ml project and its C++ emulation (hls4ml.json: precisions, check)
  rtl/                or the RTL (--backend rtl: da4ml Verilog; rtl.json: ports, Verilator check),
                      with Yosys' netlist counts once synthesized (rtl/yosys_stat.json)
  resources.json      the accurate resource report; loop.json the closed loop's iterations
  run.json            config, versions, stages with wall times and output sha256, metrics
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitc.artifacts import HARDWARE_KINDS, Budget, CompressionPlan, HardwareConfig, ResourceReport
from fitc.config import RunConfig
from fitc.errors import ArtifactError, BudgetInfeasibleError, EquivalenceError
from fitc.rundir import (
    RunDir,
    check_not_busy,
    check_not_nested,
    copy_file,
    fingerprint,
    load_torch,
    read_json,
    save_torch,
    write_json,
)

if TYPE_CHECKING:  # torch is imported where it is used: a refused command stays quick
    import torch

log = logging.getLogger(__name__)

STAGES = ("train", "search", "finetune", "export", "verify", "lower", "estimate")
DEFAULT_BUDGET = "size=1/16"
PLAN_FILES = ("plan.json", "masks.pt", "model.pt")
# The closed loop searches its hardware limits times this: the fast model, even calibrated on the
# last design, misses a new design's accurate LUT by a few % (digits-mlp at 10 % of an xc7z020,
# activation bits searched: 1–2.5 % over after recalibration, where the loop stops as stalled).
LOOP_HEADROOM = 0.97


@dataclass
class Run:
    """A run in progress: config, run directory, and lazily loaded stage results."""

    cfg: RunConfig
    dir: RunDir
    fps: dict[str, str] = field(default_factory=dict)  # stage → fingerprint, this command's
    last_stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    module: torch.nn.Module | None = None  # a model handed in from Python (fitc.compress)

    # ---- inputs -------------------------------------------------------------------------------
    @cached_property
    def source(self):
        """Where the network comes from (zoo, generic, the user's file or module, an object)."""
        from fitc.models import object_source, resolve_model

        if self.module is not None:
            return object_source(self.module)
        return resolve_model(self.cfg.model, self.cfg.model_args)

    @cached_property
    def _network_and_data(self):
        from fitc.models import open_network

        return open_network(self.source, self.cfg.data, self.cfg.seed, hidden=self.cfg.hidden)

    @property
    def network(self):
        """The network (its source, the compiled network's spec, the user's input shape)."""
        return self._network_and_data[0]

    @property
    def spec(self):
        return self.network.spec

    @property
    def data(self):
        """The data, split and standardised, shaped for the compiled network."""
        return self._network_and_data[1]

    @cached_property
    def targets(self) -> dict[str, float]:
        """Every budget the design must meet, kind → limit (device fractions expanded)."""
        budgets = self.cfg.budgets()
        if self.cfg.device:
            from fitc.backends.devices import device_budgets

            budgets += device_budgets(self.cfg.device, self.cfg.fraction)
        if not budgets:
            budgets = [Budget.parse(DEFAULT_BUDGET)]
        targets: dict[str, float] = {}
        for b in budgets:  # a kind given twice (a flag and a device fraction): the tighter wins
            targets[b.kind] = min(b.limit, targets.get(b.kind, b.limit))
        return targets

    @property
    def hardware_budget(self) -> bool:
        return any(kind in HARDWARE_KINDS for kind in self.targets)

    @cached_property
    def hardware(self) -> HardwareConfig:
        hw = self.cfg.hardware()
        if self.cfg.device and self.cfg.part is None:
            from fitc.backends.devices import get_device

            hw = dataclasses.replace(hw, part=get_device(self.cfg.device).part)
        if hw.backend != "rtl" and hw.io_type != self.io_choice.io_type:
            hw = dataclasses.replace(hw, io_type=self.io_choice.io_type)
        if hw.strategy != self.strategy_choice.strategy:
            hw = dataclasses.replace(hw, strategy=self.strategy_choice.strategy)
        return hw

    @cached_property
    def strategy_choice(self):
        """The hls4ml strategy and why (``strategy: auto`` is decided by the budget and the io
        type, see :mod:`fitc.backends.hls.strategy_rule`)."""
        from fitc.backends.hls.strategy_rule import choose_strategy

        c = self.cfg
        choice = choose_strategy(
            c.strategy,
            hardware_budget=self.hardware_budget,
            io_type=self.io_choice.io_type,
            reuse_factor=int(c.reuse_factor),
            backend=c.firmware_backend,
        )
        if c.strategy == "auto":
            log.info("strategy %s (%s)", choice.strategy, choice.reason)
        return choice

    @cached_property
    def io_choice(self):
        """The hls4ml io type and why (``io_type: auto`` is decided by the network's size, see
        :mod:`fitc.backends.hls.io_rule`)."""
        from fitc.backends.hls.io_rule import io_choice_for

        model = self.network.compiled_fresh(self.cfg.seed) if self.cfg.io_type == "auto" else None
        choice = io_choice_for(model, self.spec.input_shape, self.cfg.io_type)
        if self.cfg.io_type == "auto":
            log.info("io type %s (%s)", choice.io_type, choice.reason)
        return choice

    def data_fingerprint(self) -> Any:
        d = self.cfg.data
        return Path(d) if d and Path(d).is_file() else d

    # ---- stage results, loaded from the run directory when the stage was skipped --------------
    @cached_property
    def float_model(self) -> torch.nn.Module:
        """The compiled float network (batch norm folded, …) with the weights of ``float.pt``."""
        model = self.network.compiled_fresh(self.cfg.seed)
        try:
            model.load_state_dict(load_torch(self.dir.checked("float.pt")))
        except RuntimeError as e:
            raise ArtifactError(
                f"{self.dir / 'float.pt'} does not fit the network {self.source.ref} "
                f"({str(e).splitlines()[0]}); was the model changed? start a new run (--out)"
            ) from None
        return model.eval()

    @cached_property
    def fisher(self):
        import torch

        from fitc.fisher import Fisher, estimate_fisher

        cfg = self.cfg
        if cfg.fisher_from:  # shared Fisher of the shared float model (sweeps)
            return Fisher.from_state(load_torch(cfg.fisher_from))
        return estimate_fisher(
            self.float_model,
            torch.from_numpy(self.data.X_train),
            torch.from_numpy(self.data.y_train),
            method=cfg.fisher_method,
            max_batches=cfg.fisher_max_batches,
            seed=cfg.seed,
            progress=cfg.progress,
        )

    def save_fisher(self, path: Path) -> None:
        """Write this run's Fisher (weights-only loadable) for other runs' ``fisher_from``."""
        save_torch(path, self.fisher.to_state())

    @cached_property
    def plan(self) -> CompressionPlan:
        return CompressionPlan.from_dict(read_json(self.dir.checked("plan.json")))

    @cached_property
    def masks(self) -> dict[str, torch.Tensor]:
        return load_torch(self.dir.checked("masks.pt"))

    @cached_property
    def model_masks(self) -> dict[str, torch.Tensor]:
        """The pruning support model.pt was fine-tuned on: masks.pt, or where regrowth moved
        it, the moved one (same count per layer)."""
        return load_torch(self.dir.checked("model.pt"))["masks"]

    @cached_property
    def qmodel(self) -> torch.nn.Module:
        from fitc.build import load_quant_model

        return load_quant_model(
            self.float_model, self.plan, None, self.dir.checked("model.pt")
        ).eval()

    @cached_property
    def exported(self):
        from fitc.export import ExportedGraph

        graph = ExportedGraph.from_dict(read_json(self.dir.checked("export.json")))
        # Paths are recorded relative to where the run was made; the run directory may have moved.
        return dataclasses.replace(
            graph,
            qonnx_path=str(self.dir / Path(graph.qonnx_path).name),
            qcdq_path=str(self.dir / Path(graph.qcdq_path).name) if graph.qcdq_path else None,
        )

    # ---- what a finished run offers ------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, Any]:
        return self.dir.metrics

    @property
    def qonnx_path(self) -> Path | None:
        path = self.dir / "model.qonnx.onnx"
        return path if path.is_file() else None

    @property
    def hls4ml_dir(self) -> Path | None:
        path = self.dir / "hls4ml"
        return path if (self.dir / "hls4ml.json").is_file() else None

    def forget(self, *names: str) -> None:
        """Drop cached stage results so they are loaded again from the run directory."""
        for name in names:
            self.__dict__.pop(name, None)

    def stage(
        self,
        name: str,
        inputs: tuple,
        outputs: list[str],
        fn,
        *,
        after: str | None = "",
        optional=(),
        dirs=(),
    ) -> bool:
        """Run stage ``name`` unless done; its fingerprint chains the stage it depends on:
        ``after`` (default: the stage run before it). ``optional``: files it may write;
        ``dirs``: its working directories (see RunDir)."""
        parent = self.last_stage if after == "" else after
        fp = fingerprint(name, self.fps.get(parent, "") if parent else "", *inputs)
        self.fps[name], self.last_stage = fp, name
        return self.dir.run_stage(name, fp, outputs, fn, optional=optional, dirs=dirs, after=parent)

    def identity(self) -> dict[str, Any]:
        """Which run this is: a run directory recording another identity holds another run."""
        src, data = self.source, self.cfg.data or self.spec.default_data
        if data and Path(data).expanduser().is_file():
            data = str(Path(data).expanduser().resolve())
        return {
            "model": src.ref,
            "model_args": dict(src.args),
            "model_sha256": src.sha256,
            "hidden": list(self.cfg.hidden) if src.kind == "generic" else None,
            "data": data,
            "seed": self.cfg.seed,
        }


def open_run(
    cfg: RunConfig,
    *,
    module: torch.nn.Module | None = None,
    force: bool = False,
    record: dict[str, Any] | None = None,
) -> Run:
    """Validate the model, data and budgets first, so bad input leaves no run directory behind.

    ``module`` is a network handed in from Python (:func:`fitc.compress`) instead of
    ``cfg.model``. A recorded run whose model file changed or vanished is refused (unless
    ``force``), and so is a new run inside another run's directory. Nothing is written here: the
    first stage that runs claims the directory (one writer; another run there is refused unless
    ``force``, which deletes it: see :class:`~fitc.rundir.RunDir`). ``record``: the config to
    record in ``run.json`` (default ``cfg``'s; a command working on a finished run keeps the
    recorded one, so its own options are not persisted).
    """
    run = Run(cfg, dir=None, module=module)  # type: ignore[arg-type]
    recorded = cfg.run_dir() / "run.json"
    if not recorded.is_file():
        check_not_nested(cfg.run_dir())
    elif run.module is None and not force:
        from fitc.models import check_recorded_source

        source = read_json(recorded).get("model_source")
        check_recorded_source(source, cfg.model, cfg.model_args, cfg.run_dir())
    _ = run.spec, run.data, run.targets, run.hardware
    config = cfg.to_dict() if record is None else record
    if run.source.kind == "object" and record is None:
        config["model"] = run.source.ref
    inputs = [cfg.data, cfg.weights, cfg.float_from, cfg.fisher_from, run.source.path]
    run.dir = RunDir(
        cfg.run_dir(),
        config=config,
        model_source=run.source.to_dict(),
        identity=run.identity(),
        force=force,
        keep=[Path(p).expanduser() for p in inputs if p and Path(p).expanduser().is_file()],
    )
    return run


# ---------------------------------------------------------------------------------------------
# The driver


def run_pipeline(
    cfg: RunConfig,
    *,
    until: str | None = None,
    module: torch.nn.Module | None = None,
    force: bool = False,
) -> Run:
    """Run the pipeline up to and including stage ``until`` (default: the config's).

    ``until="export"`` includes the verification: an exported graph is never left unchecked.
    ``module``: a network handed in from Python instead of ``cfg.model`` (see :func:`open_run`).
    ``force``: replace another run found in the run directory instead of refusing.
    """
    until = until or cfg.until
    last = STAGES.index("verify" if until == "export" else until)
    check_not_busy(cfg.run_dir())  # another writer there: say so now, before loading anything
    run = open_run(cfg, module=module, force=force)

    with run.dir.writing():  # one writer from the first stage to the last
        train(run)
        if last >= STAGES.index("search"):
            if run.hardware_budget and last >= STAGES.index("finetune"):
                closed_loop(run)
            else:
                search(run)
                if last >= STAGES.index("finetune"):
                    finetune(run)
        if last >= STAGES.index("verify"):
            export(run)
            verify(run)
        if last >= STAGES.index("lower"):
            lower(run)
            if cfg.resource_model == "yosys" and last >= STAGES.index("estimate"):
                synth_yosys(run)
        if last >= STAGES.index("estimate"):
            estimate(run, firmware=firmware_stage(run.hardware.backend))
    return run


# ---------------------------------------------------------------------------------------------
# Stages


def train(run: Run) -> None:
    """The float network: trained here, or the user's trained weights, then compiled (BN folded)."""
    from fitc.models import evaluate, load_weights, module_fingerprint, train_float

    cfg, net = run.cfg, run.network
    weights = Path(cfg.weights).expanduser() if cfg.weights else None

    def fn() -> dict:
        net.check_buildable(cfg.seed)
        metrics: dict[str, Any] = {}
        if cfg.float_from:  # shared float model (sweeps): reuse, do not retrain
            model = net.compiled_fresh(cfg.seed)
            model.load_state_dict(load_torch(cfg.float_from))
            metrics["float_from"] = cfg.float_from
        else:
            user_data = net.user_view(run.data)
            if weights is not None:
                model = net.fresh(cfg.seed)
                metrics.update(load_weights(model, weights))
            elif run.module is not None and not cfg.train_module:
                model = net.fresh(cfg.seed)
                metrics["weights"] = "the module handed in (not trained by fitc)"
            else:
                model = net.trainable(cfg.seed)
                metrics = train_float(
                    model,
                    user_data,
                    epochs=cfg.train_epochs or run.spec.train_epochs,
                    lr=cfg.train_lr,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed,
                    progress=cfg.progress,
                )
            user_acc = evaluate(model, user_data.X_test, user_data.y_test)
            model = net.compile_checked(model, user_data)
            if net.changes:
                metrics["compiled"] = list(net.changes)
                metrics["float_test_accuracy_as_written"] = user_acc
        save_torch(run.dir / "float.pt", model.state_dict())
        run.__dict__["float_model"] = model.eval()
        metrics["float_test_accuracy"] = evaluate(model, run.data.X_test, run.data.y_test)
        if run.module is not None and not cfg.train_module and weights is None:
            chance = 1.0 / run.spec.num_classes
            if metrics["float_test_accuracy"] < 1.5 * chance:
                log.warning(
                    "the module handed in scores %.3f (chance %.3f): is it trained? pass "
                    "train=True to fitc.compress to train it first",
                    metrics["float_test_accuracy"], chance,
                )  # fmt: skip
        return metrics

    run.stage(
        "train",
        (
            run.source.to_dict(),
            cfg.hidden,
            run.data_fingerprint(),
            cfg.seed,
            cfg.train_epochs,
            cfg.train_lr,
            cfg.batch_size,
            Path(cfg.float_from) if cfg.float_from else None,
            weights,
            (module_fingerprint(run.module), cfg.train_module) if run.module is not None else None,
        ),
        ["float.pt"],
        fn,
    )


def _search_inputs(run: Run) -> tuple:
    c = run.cfg
    hardware = run.hardware.to_dict() if run.hardware_budget else None
    return (
        hardware,
        run.targets,
        Path(c.fisher_from) if c.fisher_from else None,
        c.weight_bits,
        act_ladder(run),
        c.per_layer_prune,
        c.fisher_method,
        c.fisher_max_batches,
        c.algorithm,
        c.lam,
        c.refresh_every,
    )


def search(run: Run) -> None:
    def fn() -> dict:
        budget, cost = search_cost(run.targets, run.hardware)
        plan, timings = _search_once(run, budget, cost, run.dir.path)
        return {
            "budget": str(budget) if budget.kind != "combined" else run.targets,
            "planned_cost": plan.achieved_cost,
            "predicted_fit": plan.predicted_fit,
            **timings,
        }

    run.stage("search", _search_inputs(run), ["plan.json", "masks.pt"], fn)


#: Where activation bits are searched (hardware budgets), plans quantize activations to 4–5 bits
#: and fine-tune this many times the model's default epochs: digits-mlp on 25 % of an xc7z020 went
#: from 95.73 to 96.47 % with 60 epochs instead of 30 (3 seeds); size budgets (8-bit activations)
#: gained nothing from 60.
LOW_BIT_ACT_EPOCHS = 2


def finetune_epochs(run: Run) -> int:
    """Fine-tuning epochs: the config's, else the model's own default (``ModelSpec``), times
    :data:`LOW_BIT_ACT_EPOCHS` when the activation bits are searched below 8."""
    if run.cfg.finetune_epochs:
        return run.cfg.finetune_epochs
    low_act = min(act_ladder(run)) < 8
    return run.spec.finetune_epochs * (LOW_BIT_ACT_EPOCHS if low_act else 1)


def _finetune_inputs(run: Run) -> tuple:
    c = run.cfg
    return (
        finetune_epochs(run), c.finetune_lr, c.optimizer, c.schedule, c.batch_size, c.regrow,
        c.distill,
    )  # fmt: skip


def finetune(run: Run) -> None:
    run.stage(
        "finetune",
        _finetune_inputs(run),
        ["model.pt"],
        lambda: _finetune_once(run, run.plan, run.masks, run.dir.path),
    )


def closed_loop(run: Run) -> None:
    """Search and fine-tune until the accurate resource estimate meets the hardware budget."""
    from fitc.loop import keep, next_step, overshoot, record_iteration

    cfg, hw, targets = run.cfg, run.hardware, run.targets
    accurate_model = cfg.resource_model if cfg.resource_model != "report" else "da4ml"

    def fn() -> dict:
        # Iterations are made aside and moved into loop/ at the end: a loop that fails leaves
        # the last loop's files as they were.
        work = Path(tempfile.mkdtemp(prefix=".loop.", dir=run.dir.path))
        try:
            return iterate(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def iterate(work: Path) -> dict:
        history, metrics_of, reason = [], {}, ""
        calibration: dict[str, float] = {}
        decision = next_step([], targets)
        while True:
            k = len(history) + 1
            t0 = time.perf_counter()
            budget, cost = search_cost(_with_headroom(decision.limits), hw, calibration)
            it_dir = work / f"iter{k}"
            try:
                plan, timings = _search_once(run, budget, cost, it_dir)
            except BudgetInfeasibleError as e:
                if not history:
                    raise BudgetInfeasibleError(
                        f"{e} (fast analytical estimate; targets {targets})", e.smallest_reachable
                    ) from None
                log.info("loop: tightened budget %s cannot be reached; stopping", decision.limits)
                reason = "infeasible"
                break
            metrics_of[k] = {**_finetune_once(run, plan, run.masks, it_dir), **timings}
            accurate = measure_resources(run, plan, run.qmodel, accurate_model, dest=it_dir)
            history.append(
                record_iteration(
                    k, decision, calibration, plan, hw, accurate, metrics_of[k],
                    time.perf_counter() - t0,
                )
            )  # fmt: skip
            log.info(
                "loop iteration %d: accurate %s vs targets %s (overshoot %.3f)",
                k, history[-1].accurate, targets, overshoot(history[-1].accurate, targets),
            )  # fmt: skip
            decision = next_step(history, targets, max_iterations=cfg.max_loop_iterations)
            if decision.stop:
                reason = decision.reason
                break
            calibration = decision.calibration

        best = keep(history, targets)  # the best fitting design on validation, else the closest
        fitting = overshoot(best.accurate, targets) <= 1.0
        for name in PLAN_FILES:
            copy_file(work / f"iter{best.iteration}" / name, run.dir / name)
        shutil.rmtree(run.dir / "loop", ignore_errors=True)
        work.rename(run.dir / "loop")
        run.forget("plan", "masks", "model_masks", "qmodel")
        summary = {
            "targets": targets,
            "accurate_model": accurate_model,
            "iterations": len(history),
            "stop_reason": reason,
            "chosen_iteration": best.iteration,
            "fits": bool(fitting),
            "accurate": best.accurate,
            "accuracy": best.accuracy,
        }
        write_json(run.dir / "loop.json", {**summary, "history": history})
        if not fitting:
            log.warning(
                "no design met %s after %d iterations (%s); keeping the closest, iteration %d: %s",
                targets, len(history), reason, best.iteration, best.accurate,
            )  # fmt: skip
        plan = run.plan
        return {
            **metrics_of[best.iteration],
            "loop": summary,
            "budget": targets,
            "planned_cost": plan.achieved_cost,
            "predicted_fit": plan.predicted_fit,
        }

    inputs = (*_search_inputs(run), *_finetune_inputs(run), accurate_model, cfg.max_loop_iterations)
    run.stage("loop", inputs, [*PLAN_FILES, "loop.json"], fn, dirs=["loop"])


def export(run: Run) -> None:
    from fitc.export import export_qonnx

    def fn() -> dict:
        exported = export_qonnx(run.qmodel, run.spec.input_shape, run.dir.path, plan=run.plan)
        write_json(run.dir / "export.json", exported.to_dict())
        run.forget("exported")
        return {"qcdq_skipped_reason": exported.qcdq_skipped_reason}

    run.stage("export", (), ["model.qonnx.onnx", "export.json"], fn, optional=["model.qcdq.onnx"])


#: Rows at the edges of the input quantizer (ties, ±1 step, huge and tiny values) every hop is
#: also checked on, besides the test split (the RTL's check adds as many).
EDGE_ROWS = 64


def range_edges(run: Run):
    """The range-edge rows of this run's network, and dummy labels for the checks' accuracies."""
    import numpy as np

    from fitc.export import range_edge_inputs

    X = range_edge_inputs(run.qmodel, tuple(run.spec.input_shape), EDGE_ROWS, seed=run.cfg.seed)
    return X, np.zeros(len(X), dtype=np.int64)


def verify(run: Run) -> None:
    """Brevitas ≡ qonnx ≡ onnxruntime, bit for bit, on the test split and on range-edge rows."""
    from fitc.export import check_equivalence, verify_chain

    def fn() -> dict:
        report = verify_chain(
            run.qmodel,
            run.exported,
            run.data.X_test,
            run.data.y_test,
            plan=run.plan,
            masks=run.model_masks,
        )
        edges = verify_chain(run.qmodel, run.exported, *range_edges(run))
        write_json(run.dir / "equivalence.json", report.to_dict())
        check_equivalence(report)
        check_equivalence(edges)
        return {"equivalence": report.to_dict(), "equivalence_range_edge": edges.to_dict()}

    run.stage("verify", (EDGE_ROWS,), ["equivalence.json"], fn)


def lower(run: Run) -> None:
    """The firmware of the run's backend: an hls4ml project, or the RTL (:func:`lower_rtl`)."""
    from fitc.artifacts import check_reuse_factor
    from fitc.backends.hls import emulation_check
    from fitc.backends.hls import lower as lower_graph

    hw = run.hardware
    if hw.backend == "rtl":
        lower_rtl(run)
        return

    def fn() -> dict:
        qonnx_path = Path(run.exported.qonnx_path)
        project = lower_graph(
            qonnx_path, run.dir / "hls4ml", hw, plan=run.plan, layer_map=run.exported.layer_map
        )
        hop = emulation_check(project, qonnx_path, run.data.X_test, run.data.y_test)
        edges = emulation_check(project, qonnx_path, *range_edges(run))
        write_json(
            run.dir / "hls4ml.json",
            {
                "project": project.to_dict(),
                "emulation": hop.to_dict(),
                **run.io_choice.to_dict(),
                **run.strategy_choice.to_dict(),
            },
        )
        for h, rows in ((hop, "test"), (edges, "range-edge")):
            if not h.exact:
                raise EquivalenceError(
                    f"hls4ml emulation differs from the QONNX graph {qonnx_path} on {rows} rows: "
                    f"max |diff| {h.max_abs_diff}, identical rows {h.identical_rows:.3f}"
                )
        return {
            "emulation": hop.to_dict(),
            "emulation_range_edge": edges.to_dict(),
            "hls_compile_time_s": project.compile_time_s,
            **run.io_choice.to_dict(),
            **run.strategy_choice.to_dict(),
            **_fit_under(run, hw),
        }

    check_reuse_factor(
        hw, [(lp.name, lp.fan_in, lp.n_weights // lp.fan_in) for lp in run.plan.layers]
    )
    run.stage(
        "lower", (hw.to_dict(), EDGE_ROWS), ["hls4ml.json"], fn, after="verify", dirs=["hls4ml"]
    )


def lower_rtl(run: Run) -> None:
    """The plan as Verilog through da4ml (``rtl/``), and the RTL hop: Verilator ≡ qonnx."""
    from fitc.backends.rtl import rtl_check, write_rtl

    hw, cutoff = run.hardware, run.cfg.latency_cutoff

    def fn() -> dict:
        project = write_rtl(
            run.qmodel,
            run.plan,
            run.dir / "rtl",
            latency_cutoff=cutoff,
            clock_period_ns=hw.clock_period_ns,
            input_shape=run.spec.input_shape,
            part=hw.part,
        )
        hop = rtl_check(project, run.exported.qonnx_path, run.data.X_test, run.data.y_test)
        write_json(
            run.dir / "rtl.json",
            {"project": project.to_dict(), "hardware": hw.to_dict(), "emulation": hop.to_dict()},
        )
        if not hop.exact:
            raise EquivalenceError(
                f"the RTL (Verilator) differs from the QONNX graph {run.exported.qonnx_path}: "
                f"max |diff| {hop.max_abs_diff}, identical rows {hop.identical_rows:.3f}"
            )
        return {
            "rtl_emulation": hop.to_dict(),
            "rtl_latency_cycles": project.latency_cycles,
            **_fit_under(run, hw),
        }

    run.stage("rtl", (hw.to_dict(), cutoff), ["rtl.json"], fn, after="verify", dirs=["rtl"])


def synth_yosys(run: Run) -> None:
    """Open-source synthesis of the RTL (Yosys ``synth_xilinx`` for the part's family)."""
    from fitc.backends.yosys import STAT_JSON, load_yosys_report, synthesize_yosys

    def fn() -> dict:
        rtl = run.dir / "rtl"
        chosen = (run.metrics.get("loop") or {}).get("chosen_iteration")
        done = run.dir / "loop" / f"iter{chosen}" / "rtl"
        if chosen and reuse_synthesis(done, rtl, run.hardware.part):
            log.info("Yosys: the loop synthesized this very Verilog (%s); reusing it", done)
            report = load_yosys_report(rtl)
        else:
            report = synthesize_yosys(rtl, run.hardware.part)
        return {"yosys": {"lut": report.lut, "ff": report.ff, "wall_time_s": report.wall_time_s}}

    run.stage("synth", (run.hardware.part,), [f"rtl/{STAT_JSON}"], fn, after="rtl")


def reuse_synthesis(done: Path, rtl_dir: Path, part: str) -> bool:
    """Copy Yosys' results from the RTL project ``done`` into ``rtl_dir`` when both hold the same
    Verilog (byte for byte) synthesized for ``part``'s family; False (nothing copied) otherwise."""
    from fitc.backends.rtl import load_rtl_project
    from fitc.backends.yosys import (
        LOG_NAME,
        RAW_STAT_JSON,
        STAT_JSON,
        load_yosys_report,
        xilinx_family,
    )

    if not (done / STAT_JSON).is_file():
        return False
    old, new = load_rtl_project(done), load_rtl_project(rtl_dir)
    if old.verilog_sources != new.verilog_sources or load_yosys_report(done).family != (
        xilinx_family(part)
    ):
        return False
    if any((done / f).read_bytes() != (rtl_dir / f).read_bytes() for f in new.verilog_sources):
        return False
    for name in (LOG_NAME, RAW_STAT_JSON):
        if (done / name).is_file():
            copy_file(done / name, rtl_dir / name)
    write_json(rtl_dir / STAT_JSON, {**read_json(done / STAT_JSON), "rtl_dir": str(rtl_dir)})
    return True


#: The stage that builds each backend's firmware.
FIRMWARE_STAGES = {"Vitis": "lower", "Vivado": "lower", "rtl": "rtl"}


def firmware_stage(backend: str) -> str:
    return FIRMWARE_STAGES[backend]


def firmware_hardware(run: Run, stage: str | None) -> HardwareConfig:
    """The hardware the firmware built by ``stage`` was made for (``run.hardware`` if None)."""
    if stage is None or stage not in run.dir.stages:
        return run.hardware
    record = read_json(run.dir.checked("hls4ml.json" if stage == "lower" else "rtl.json"))
    hw = record["project"]["hardware"] if stage == "lower" else record["hardware"]
    return HardwareConfig.from_dict(hw)


def _fit_under(run: Run, hw: HardwareConfig) -> dict[str, Any]:
    """Whether the plan still fits the hardware budget under the firmware ``hw`` builds (the fast
    model's word; the plan was searched for ``run.cfg``'s hardware), warning when it does not."""
    from fitc.backends.resources import AnalyticalModel
    from fitc.loop import fits

    if not run.hardware_budget:
        return {}
    fast = AnalyticalModel().estimate(run.plan, hw).totals()
    ok = fits(fast, run.targets)
    if ok is False:
        log.warning(
            "under %s (%s, reuse factor %d) the plan no longer fits %s by the analytical estimate "
            "(%s); `fitc lower %s … --replan` searches a plan for this firmware",
            hw.backend, hw.strategy, hw.reuse_factor, run.targets,
            {k: round(v) for k, v in fast.items() if k in run.targets}, run.dir.path,
        )  # fmt: skip
    return {"plan_fits_firmware": ok}


def estimate(
    run: Run, model: str | None = None, *, firmware: str | None = None, output: Path | None = None
) -> ResourceReport:
    """Resources of the final design by the accurate model (and the fast one, for comparison).

    ``firmware``: the stage whose firmware is costed (``"lower"``: hls4ml, ``"rtl"``), its
    hardware as it was built; None costs the plan for the run's hardware. ``yosys`` reads the
    netlist counts of ``fitc synth DIR --tool yosys``; ``report`` the vendor reports. The report
    goes to ``resources.json`` (a stage, recorded in ``run.json``) or, with ``output``, only to
    that file. Nothing is written unless the estimate succeeds."""
    from fitc.backends.resources import AnalyticalModel
    from fitc.loop import fits

    name = model or run.cfg.resource_model
    if name == "yosys":
        firmware = "synth"
    hw = firmware_hardware(run, "rtl" if firmware == "synth" else firmware)

    def compute() -> dict:
        report = measure_resources(run, run.plan, run.qmodel, name, hw=hw, dest=run.dir.path)
        fast = AnalyticalModel().estimate(run.plan, hw)
        achieved = {k: run.metrics[f"achieved_{k}"] for k in ("size", "bops")
                    if run.metrics.get(f"achieved_{k}") is not None}  # fmt: skip
        return {
            "resources": report.to_dict(),
            "resources_analytical": fast.totals(),
            "fits": fits({**achieved, **report.totals()}, run.targets),
        }

    if output is not None:
        metrics = compute()
        write_json(output, metrics["resources"])
        return ResourceReport.from_dict(metrics["resources"])

    def fn() -> dict:
        metrics = compute()
        write_json(run.dir / "resources.json", metrics["resources"])
        return metrics

    # Vendor reports change when the user synthesizes again: they are inputs of this stage.
    reports = (
        sorted(p for p in (run.dir / "hls4ml").rglob("*") if p.suffix in (".rpt", ".xml"))
        if name == "report"
        else []
    )
    after = firmware if firmware else run.last_stage
    run.stage("estimate", (name, hw.to_dict(), *reports), ["resources.json"], fn, after=after)
    return ResourceReport.from_dict(read_json(run.dir / "resources.json"))


# ---------------------------------------------------------------------------------------------
# What the stages share


def search_cost(limits: dict[str, float], hw: HardwareConfig, calibration: dict | None = None):
    """The search's budget and cost model: one budget directly, several as their worst ratio."""
    from fitc.cost import MaxRatioCost, cost_for

    def one(kind: str):
        if kind in HARDWARE_KINDS:
            from fitc.backends.resources import AnalyticalModel, LutCost

            return LutCost(AnalyticalModel().calibrated(calibration or {}), hw, kind)
        return cost_for(Budget(kind, limits[kind]))

    if len(limits) == 1:
        ((kind, limit),) = limits.items()
        return Budget(kind, limit), one(kind)
    return Budget("combined", 1.0), MaxRatioCost([(one(k), lim) for k, lim in limits.items()])


def act_ladder(run: Run) -> tuple[int, ...]:
    """The activation-bit ladder searched: the config's, or by the run's budget kinds
    (:func:`fitc.space.default_act_bits`) when it gives none."""
    from fitc.space import default_act_bits

    return run.cfg.act_bits if run.cfg.act_bits is not None else default_act_bits(run.targets)


def _with_headroom(limits: dict[str, float]) -> dict[str, float]:
    """The closed loop's limits as searched: hardware ones times :data:`LOOP_HEADROOM`."""
    return {k: v * LOOP_HEADROOM if k in HARDWARE_KINDS else v for k, v in limits.items()}


def _search_once(
    run: Run, budget: Budget, cost, dest: Path
) -> tuple[CompressionPlan, dict[str, float]]:
    """Search a plan against ``cost`` ≤ ``budget``; write plan.json and masks.pt into ``dest``.
    Returns the plan and the search's timings (metrics: plan.json keeps them at 0, so that the
    same inputs give the same bytes)."""
    import torch

    from fitc.search import search_plan
    from fitc.space import SearchSpace

    cfg = run.cfg
    space = SearchSpace(
        weight_bits=cfg.weight_bits, act_bits=act_ladder(run), per_layer_prune=cfg.per_layer_prune
    )
    X, y = torch.from_numpy(run.data.X_train), torch.from_numpy(run.data.y_train)
    result = search_plan(
        run.float_model,
        run.fisher,
        budget,
        space,
        cost=cost,
        lam=cfg.lam,
        algorithm=cfg.algorithm,
        refresh_every=cfg.refresh_every,
        refresh_data=(X, y),
        model_name=cfg.model,
        input_shape=run.spec.input_shape,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    plan = dataclasses.replace(result.plan, fisher_time_s=0.0, search_time_s=0.0)
    write_json(dest / "plan.json", plan.to_dict())
    save_torch(dest / "masks.pt", result.masks)
    run.__dict__["plan"], run.__dict__["masks"] = plan, result.masks
    timings = {
        "fisher_time_s": result.plan.fisher_time_s,
        "search_time_s": result.plan.search_time_s,
    }
    return plan, timings


def _finetune_once(run: Run, plan: CompressionPlan, masks: dict, dest: Path) -> dict[str, Any]:
    """Build the plan with Brevitas, calibrate, fine-tune; write model.pt into ``dest``."""
    import torch

    from fitc.build import (
        apply_plan,
        calibrate,
        check_against_plan,
        measure_layers,
        save_quant_model,
    )
    from fitc.finetune import finetune as finetune_model
    from fitc.finetune import support_of
    from fitc.models import evaluate

    cfg, data = run.cfg, run.data
    qmodel = apply_plan(run.float_model, plan, masks)
    check_against_plan(plan, measure_layers(qmodel, plan))
    calibrate(qmodel, torch.from_numpy(data.X_train))
    built_acc = evaluate(qmodel, data.X_test, data.y_test)
    metrics = finetune_model(
        qmodel,
        masks,
        data,
        epochs=finetune_epochs(run),
        lr=cfg.finetune_lr,
        optimizer=cfg.optimizer,
        schedule=cfg.schedule,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        regrow=cfg.regrow,
        teacher=run.float_model,
        distill=cfg.distill,
    )
    qmodel.eval()
    if metrics.get("finetune_regrown"):  # the support moved: model.pt keeps the one it ended on
        masks = {
            name: support for name, support in support_of(qmodel, None).items() if name in masks
        }
    save_quant_model(dest / "model.pt", qmodel, masks)
    run.__dict__["qmodel"] = qmodel
    return {
        **metrics,
        "built_test_accuracy": built_acc,
        "finetuned_test_accuracy": evaluate(qmodel, data.X_test, data.y_test),
        **_size_metrics(qmodel, plan),
    }


def _size_metrics(qmodel, plan: CompressionPlan) -> dict[str, float]:
    """Size and BOPs recomputed from the built model's actual quantized weights."""
    from fitc.build import measure_layers
    from fitc.cost import BopsCost, SizeCost

    measured = measure_layers(qmodel, plan)
    return {"achieved_size": SizeCost()(measured), "achieved_bops": BopsCost()(measured)}


def measure_resources(
    run: Run,
    plan: CompressionPlan,
    qmodel,
    model: str = "da4ml",
    *,
    hw: HardwareConfig | None = None,
    dest: Path | None = None,
) -> ResourceReport:
    """The accurate resource report of a built design (da4ml, analytical, Yosys, vendor report)
    for ``hw`` (default the run's). ``yosys`` reads the counts saved in ``dest/rtl``; when there
    are none (the closed loop's iterations) it writes the RTL there and synthesizes it first."""
    from fitc.backends.resources import get_resource_model, quant_input_types, quant_int_weights

    hw = hw or run.hardware
    rm = get_resource_model(model)
    if model == "da4ml":
        return rm.estimate(
            plan,
            hw,
            weights=quant_int_weights(qmodel, [lp.name for lp in plan.layers]),
            input_types=quant_input_types(qmodel),
            progress=run.cfg.progress,
        )
    if model == "report":
        project = read_json(run.dir.checked("hls4ml.json"))["project"]
        expect = {"top": project["project_name"], "part": hw.part, "layers": len(project["layers"])}
        return rm.estimate(plan, hw, report_dir=run.dir / "hls4ml", expect=expect)
    if model == "yosys":
        from fitc.backends.yosys import STAT_JSON

        rtl_dir = (dest or run.dir.path) / "rtl"
        if dest is not None and dest != run.dir.path and not (rtl_dir / STAT_JSON).is_file():
            from fitc.backends.rtl import write_rtl
            from fitc.backends.yosys import synthesize_yosys

            write_rtl(
                qmodel,
                plan,
                rtl_dir,
                latency_cutoff=run.cfg.latency_cutoff,
                clock_period_ns=hw.clock_period_ns,
                input_shape=run.spec.input_shape,
                part=hw.part,
            )
            synthesize_yosys(rtl_dir, hw.part)
            # The loop recalibrates the fast model per layer: split the netlist's totals by
            # da4ml's per-layer costs (an apportionment, logged as such; never in resources.json).
            rm = dataclasses.replace(rm, split_layers=True)
        return rm.estimate(plan, hw, rtl_dir=rtl_dir)
    return rm.estimate(plan, hw)


# ---------------------------------------------------------------------------------------------
# Helpers for the CLI


def sensitivity(cfg: RunConfig) -> list[dict[str, Any]]:
    """Per-layer FIT sensitivity of the run's float model (trained first if needed)."""
    check_not_busy(cfg.run_dir())  # before the imports (torch): a refusal is quick
    from fitc.search import sensitivity_table
    from fitc.space import SearchSpace

    run = open_run(cfg)
    with run.dir.writing():
        train(run)
    return sensitivity_table(
        run.fisher, SearchSpace(weight_bits=cfg.weight_bits, act_bits=act_ladder(run))
    )
