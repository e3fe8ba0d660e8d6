"""The fitc pipeline, top to bottom: train → search → fine-tune → export → verify → lower → estimate.

Each stage is a plain function of a :class:`Run` (the config, the run directory and the objects
built so far). ``RunDir.run_stage`` skips a stage whose inputs did not change since it last finished
and whose outputs still exist, so re-running into the same directory resumes. Objects a skipped
stage would have produced are loaded back from its artifacts on first use.

Artifacts in the run directory:
  float.pt            float weights (state dict)
  plan.json, masks.pt the searched compression plan and its pruning masks
  model.pt            fine-tuned Brevitas weights + masks
  model.qonnx.onnx    the QONNX graph; model.qcdq.onnx its onnxruntime twin (≤ 8 bits)
  hls4ml/             the hls4ml project and its C++ emulation
  resources.json      the resource report; loop.json the closed loop's iterations
  run.json            config, versions, stages with wall times, metrics
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitc.artifacts import CompressionPlan
from fitc.config import RunConfig
from fitc.errors import ArtifactError
from fitc.rundir import RunDir, fingerprint, load_torch, read_json, save_torch, write_json

log = logging.getLogger(__name__)

STAGES = ("train", "search", "finetune", "export", "verify", "lower", "estimate")


@dataclass
class Run:
    """A run in progress: config, run directory, and lazily loaded stage results."""

    cfg: RunConfig
    dir: RunDir
    fps: dict[str, str] = field(default_factory=dict)

    # ---- inputs -------------------------------------------------------------------------------
    @cached_property
    def spec(self):
        from fitc.models import get_spec

        return get_spec(self.cfg.model)

    @cached_property
    def data(self):
        from fitc.models import load_data

        return load_data(self.spec, self.cfg.data, seed=self.cfg.seed)

    def data_fingerprint(self) -> Any:
        d = self.cfg.data
        return Path(d) if d and Path(d).is_file() else d

    # ---- stage results, loaded from the run directory when the stage was skipped --------------
    @cached_property
    def float_model(self) -> torch.nn.Module:
        from fitc.models import build_model

        model = build_model(self.cfg.model, seed=self.cfg.seed)
        model.load_state_dict(load_torch(self.dir / "float.pt"))
        return model.eval()

    @cached_property
    def plan(self) -> CompressionPlan:
        return CompressionPlan.from_dict(read_json(self.dir / "plan.json"))

    @cached_property
    def masks(self) -> dict[str, torch.Tensor]:
        return load_torch(self.dir / "masks.pt")

    @cached_property
    def qmodel(self) -> torch.nn.Module:
        from fitc.build import load_quant_model

        return load_quant_model(self.float_model, self.plan, self.masks, self.dir / "model.pt").eval()

    @cached_property
    def exported(self):
        from fitc.export import ExportedGraph

        graph = ExportedGraph.from_dict(read_json(self.dir / "export.json"))
        # Paths are recorded relative to where the run was made; the run directory may have moved.
        return dataclasses.replace(
            graph,
            qonnx_path=str(self.dir / Path(graph.qonnx_path).name),
            qcdq_path=str(self.dir / Path(graph.qcdq_path).name) if graph.qcdq_path else None,
        )

    def stage(self, name: str, inputs: tuple, outputs: list[str], fn) -> bool:
        """Run stage ``name`` unless done; its fingerprint chains the previous stage's."""
        prev = STAGES[STAGES.index(name) - 1] if STAGES.index(name) else None
        fp = fingerprint(name, self.fps.get(prev, ""), *inputs)
        self.fps[name] = fp
        return self.dir.run_stage(name, fp, outputs, fn)


def open_run(cfg: RunConfig) -> Run:
    """Validate the model and data first, so bad input leaves no run directory behind."""
    run = Run(cfg, dir=None)  # type: ignore[arg-type]
    _ = run.spec, run.data
    run.dir = RunDir(cfg.run_dir(), config=cfg.to_dict())
    return run


# ---------------------------------------------------------------------------------------------
# Stages


def train(run: Run) -> None:
    from fitc.models import build_model, evaluate, train_float

    cfg = run.cfg

    def fn() -> dict:
        model = build_model(cfg.model, seed=cfg.seed)
        if cfg.float_from:  # shared float model (sweeps): reuse, do not retrain
            model.load_state_dict(load_torch(cfg.float_from))
            metrics = {"float_from": cfg.float_from}
        else:
            metrics = train_float(
                model, run.data, epochs=cfg.train_epochs or run.spec.train_epochs, lr=cfg.train_lr,
                batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress,
            )
        save_torch(run.dir / "float.pt", model.state_dict())
        run.__dict__["float_model"] = model.eval()
        metrics["float_test_accuracy"] = evaluate(model, run.data.X_test, run.data.y_test)
        return metrics

    run.stage(
        "train",
        (cfg.model, run.data_fingerprint(), cfg.seed, cfg.train_epochs, cfg.train_lr, cfg.batch_size,
         Path(cfg.float_from) if cfg.float_from else None),
        ["float.pt"],
        fn,
    )


def search(run: Run, budgets=None) -> None:
    from fitc.cost import cost_for
    from fitc.fisher import estimate_fisher
    from fitc.search import search_plan
    from fitc.space import SearchSpace

    cfg = run.cfg
    budgets = budgets or cfg.budgets()

    def fn() -> dict:
        X = torch.from_numpy(run.data.X_train)
        y = torch.from_numpy(run.data.y_train)
        fisher = estimate_fisher(
            run.float_model, X, y, method=cfg.fisher_method, max_batches=cfg.fisher_max_batches,
            seed=cfg.seed, progress=cfg.progress,
        )
        space = SearchSpace(
            weight_bits=cfg.weight_bits, act_bits=cfg.act_bits, per_layer_prune=cfg.per_layer_prune
        )
        budget = budgets[0]
        result = search_plan(
            run.float_model, fisher, budget, space, cost=cost_for(budget), lam=cfg.lam,
            algorithm=cfg.algorithm, refresh_every=cfg.refresh_every, refresh_data=(X, y),
            model_name=cfg.model, input_shape=run.spec.input_shape, seed=cfg.seed,
            progress=cfg.progress,
        )
        write_json(run.dir / "plan.json", result.plan.to_dict())
        save_torch(run.dir / "masks.pt", result.masks)
        run.__dict__["plan"], run.__dict__["masks"] = result.plan, result.masks
        return {
            "budget": str(budget),
            "planned_cost": result.plan.achieved_cost,
            "predicted_fit": result.plan.predicted_fit,
            "fisher_time_s": result.plan.fisher_time_s,
            "search_time_s": result.plan.search_time_s,
        }

    run.stage(
        "search",
        ([str(b) for b in budgets], cfg.weight_bits, cfg.act_bits, cfg.per_layer_prune,
         cfg.fisher_method, cfg.fisher_max_batches, cfg.algorithm, cfg.lam, cfg.refresh_every),
        ["plan.json", "masks.pt"],
        fn,
    )


def finetune(run: Run) -> None:
    from fitc.build import apply_plan, calibrate, measure_layers, save_quant_model
    from fitc.build import finetune as finetune_model
    from fitc.cost import BopsCost, SizeCost
    from fitc.models import evaluate

    cfg, data = run.cfg, run.data

    def fn() -> dict:
        qmodel = apply_plan(run.float_model, run.plan, run.masks)
        calibrate(qmodel, torch.from_numpy(data.X_train))
        built_acc = evaluate(qmodel, data.X_test, data.y_test)
        metrics = finetune_model(
            qmodel, run.masks, data, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
            optimizer=cfg.optimizer, schedule=cfg.schedule, batch_size=cfg.batch_size,
            seed=cfg.seed, progress=cfg.progress,
        )
        qmodel.eval()
        measured = measure_layers(qmodel, run.plan)
        _check_measured(run.plan, measured)
        save_quant_model(run.dir / "model.pt", qmodel, run.masks)
        run.__dict__["qmodel"] = qmodel
        return {
            **metrics,
            "built_test_accuracy": built_acc,
            "finetuned_test_accuracy": evaluate(qmodel, data.X_test, data.y_test),
            "achieved_size": SizeCost()(measured),
            "achieved_bops": BopsCost()(measured),
        }

    run.stage(
        "finetune",
        (cfg.finetune_epochs, cfg.finetune_lr, cfg.optimizer, cfg.schedule, cfg.batch_size),
        ["model.pt"],
        fn,
    )


def _check_measured(plan: CompressionPlan, measured) -> None:
    """The built model must be the plan: same bits, same non-zero counts, layer by layer."""
    for lp, m in zip(plan.layers, measured, strict=True):
        for key in ("weight_bits", "act_bits", "n_nonzero"):
            if getattr(lp, key) != getattr(m, key):
                raise ArtifactError(
                    f"layer {lp.name}: built model has {key}={getattr(m, key)}, plan says "
                    f"{getattr(lp, key)}"
                )


def export(run: Run) -> None:
    from fitc.export import export_qonnx

    def fn() -> dict:
        exported = export_qonnx(run.qmodel, run.spec.input_shape, run.dir.path, plan=run.plan)
        write_json(run.dir / "export.json", exported.to_dict())
        run.__dict__["exported"] = exported
        return {"qcdq_skipped_reason": exported.qcdq_skipped_reason}

    run.stage("export", (), ["model.qonnx.onnx", "export.json"], fn)


def verify(run: Run) -> None:
    from fitc.export import check_equivalence, verify_chain

    def fn() -> dict:
        report = verify_chain(
            run.qmodel, run.exported, run.data.X_test, run.data.y_test, plan=run.plan, masks=run.masks
        )
        write_json(run.dir / "equivalence.json", report.to_dict())
        check_equivalence(report)
        return {"equivalence": report.to_dict()}

    run.stage("verify", (), ["equivalence.json"], fn)


def lower(run: Run) -> None:
    from fitc.backends.hls import emulation_check
    from fitc.backends.hls import lower as lower_graph

    hw = run.cfg.hardware()

    def fn() -> dict:
        project = lower_graph(
            Path(run.exported.qonnx_path), run.dir / "hls4ml", hw, plan=run.plan,
            layer_map=run.exported.layer_map,
        )
        hop = emulation_check(project, Path(run.exported.qonnx_path), run.data.X_test, run.data.y_test)
        write_json(run.dir / "hls4ml.json", {"project": project.to_dict(), "emulation": hop.to_dict()})
        if not hop.exact:
            from fitc.errors import EquivalenceError

            raise EquivalenceError(
                f"hls4ml emulation differs from the QONNX graph: max |diff| {hop.max_abs_diff}, "
                f"identical rows {hop.identical_rows:.3f}"
            )
        return {"emulation": hop.to_dict(), "hls_compile_time_s": project.compile_time_s}

    run.stage("lower", (hw.to_dict(),), ["hls4ml.json"], fn)


# ---------------------------------------------------------------------------------------------
# The driver


def run_pipeline(cfg: RunConfig, *, until: str | None = None) -> Run:
    """Run the pipeline up to and including stage ``until`` (default: the config's).

    ``until="export"`` includes the verification: an exported graph is never left unchecked.
    """
    until = until or cfg.until
    if until == "export":
        until = "verify"
    run = open_run(cfg)
    train(run)
    for name, stage_fn in (
        ("search", search),
        ("finetune", finetune),
        ("export", export),
        ("verify", verify),
        ("lower", lower),
    ):
        if STAGES.index(name) > STAGES.index(until):
            break
        stage_fn(run)
    return run


def sensitivity(cfg: RunConfig) -> list[dict[str, Any]]:
    """Per-layer FIT sensitivity of the run's float model (trained first if needed)."""
    from fitc.fisher import estimate_fisher
    from fitc.search import sensitivity_table
    from fitc.space import SearchSpace

    run = open_run(cfg)
    train(run)
    fisher = estimate_fisher(
        run.float_model, torch.from_numpy(run.data.X_train), torch.from_numpy(run.data.y_train),
        method=cfg.fisher_method, max_batches=cfg.fisher_max_batches, seed=cfg.seed,
    )
    space = SearchSpace(weight_bits=cfg.weight_bits, act_bits=cfg.act_bits)
    return sensitivity_table(fisher, space)


def summary_rows(run: Run) -> list[dict[str, Any]]:
    """Per-layer rows for the CLI's summary table."""
    return [
        {
            "layer": lp.name,
            "w_bits": lp.weight_bits,
            "a_bits": lp.act_bits,
            "weights": lp.n_weights,
            "nonzero": lp.n_nonzero,
            "sparsity": f"{lp.sparsity:.1%}",
        }
        for lp in run.plan.layers
    ]


__all__ = ["STAGES", "Run", "open_run", "run_pipeline", "summary_rows", "train", "search",
           "finetune", "export", "verify", "lower", "np"]
