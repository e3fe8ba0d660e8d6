"""fitc.finetune: QAT keeps the pruning support fixed in every forward pass, keeps the best
validation epoch, is deterministic, and brings a compressed digits-mlp back near float accuracy."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fitc.build import (
    apply_plan,
    calibrate,
    evaluate_quant,
    int_weight,
    magnitude_masks,
    make_plan,
    measure_layers,
    quant_layers,
)
from fitc.errors import ConfigError
from fitc.finetune import finetune
from fitc.models import build_model, get_spec, load_data, train_float


@pytest.fixture(scope="module")
def trained():
    spec = get_spec("digits-mlp")
    data = load_data(spec, seed=0)
    model = build_model("digits-mlp", seed=0)
    metrics = train_float(model, data, epochs=25, seed=0, progress=False)
    return model.eval(), spec, data, metrics


def _build(trained, sparsity=0.75, bits=3):
    model, spec, data, _ = trained
    masks = magnitude_masks(model, sparsity)
    plan = make_plan(
        model,
        model_name="digits-mlp",
        input_shape=spec.input_shape,
        weight_bits=bits,
        act_bits=8,
        masks=masks,
    )
    qmodel = apply_plan(model, plan, masks)
    calibrate(qmodel, data.X_train)
    return qmodel, plan, masks


def _small(data, n=256):
    return dataclasses.replace(data, X_train=data.X_train[:n], y_train=data.y_train[:n])


def test_support_is_fixed_in_every_forward_pass(trained):
    qmodel, plan, masks = _build(trained, sparsity=0.9, bits=2)
    support = {n: int_weight(m) != 0 for n, m in quant_layers(qmodel).items()}
    checked = []

    def check(mod, inp, name):
        q = int_weight(mod)
        assert not q[~masks[name]].any(), f"{name}: a pruned weight is non-zero"
        assert torch.equal(q != 0, support[name]), f"{name}: the support moved"
        checked.append(name)

    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, name=n: check(mod, inp, name))
        for n, m in quant_layers(qmodel).items()
    ]
    finetune(qmodel, masks, _small(trained[2]), epochs=3, lr=1e-2, progress=False)
    for h in hooks:
        h.remove()
    assert len(checked) > 4 * 3 * 4  # training and validation forwards were all checked
    for lp, m in zip(plan.layers, measure_layers(qmodel, plan), strict=True):
        assert m == lp  # bits and non-zero counts still equal the plan after fine-tuning
    for name, layer in quant_layers(qmodel).items():
        assert not layer.weight[~masks[name]].any()  # the float weights themselves stay zero


def test_best_epoch_is_kept_and_runs_are_deterministic(trained):
    data = _small(trained[2], 384)
    runs = []
    for _ in range(2):
        qmodel, plan, masks = _build(trained)
        metrics = finetune(qmodel, masks, data, epochs=4, lr=3e-3, seed=1, progress=False)
        runs.append((qmodel, metrics))
    (q1, m1), (q2, m2) = runs
    assert m1["finetune_val_history"] == m2["finetune_val_history"]
    s1, s2 = q1.state_dict(), q2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    hist = m1["finetune_val_history"]
    assert len(hist) == 5 and m1["built_val_accuracy"] == hist[0]
    assert m1["finetune_val_accuracy"] == max(hist)
    assert hist[m1["finetune_best_epoch"]] == max(hist)
    assert evaluate_quant(q1, data.X_val, data.y_val) == m1["finetune_val_accuracy"]
    assert not q1.training


def test_finetuning_recovers_accuracy(trained):
    model, spec, data, float_metrics = trained
    qmodel, plan, masks = _build(trained, sparsity=0.75, bits=3)
    built = evaluate_quant(qmodel, data.X_test, data.y_test)
    metrics = finetune(
        qmodel, masks, data, epochs=8, optimizer="sgd", schedule="none", lr=0.02, progress=False
    )
    tuned = evaluate_quant(qmodel, data.X_test, data.y_test)
    assert metrics["finetune_val_accuracy"] >= metrics["built_val_accuracy"]
    assert tuned >= built - 0.01
    assert tuned >= float_metrics["float_test_accuracy"] - 0.05


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'.*adam, sgd"),
        ({"schedule": "step"}, "schedule='step'.*cosine, none"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_bad_options_are_config_errors(trained, kwargs, pattern):
    qmodel, plan, masks = _build(trained)
    with pytest.raises(ConfigError, match=pattern):
        finetune(qmodel, masks, trained[2], progress=False, **kwargs)


def test_regrowth_moves_the_support_but_keeps_every_layer_count(trained):
    """With regrow the support moves (pruned weights with large gradients join it, small weights
    leave), yet every forward pass has each layer's planned non-zero count, the plan still
    measures equal after fine-tuning, and the moved support is deterministic."""
    data = _small(trained[2], 512)
    counts = []

    def run():
        qmodel, plan, masks = _build(trained, sparsity=0.9, bits=3)
        planned = {lp.name: lp.n_nonzero for lp in plan.layers}

        def check(mod, inp, name):
            assert int((int_weight(mod) != 0).sum()) == planned[name], name
            counts.append(name)

        hooks = [
            m.register_forward_pre_hook(lambda mod, inp, name=n: check(mod, inp, name))
            for n, m in quant_layers(qmodel).items()
        ]
        metrics = finetune(qmodel, masks, data, epochs=4, lr=1e-2, regrow=0.3, progress=False)
        for h in hooks:
            h.remove()
        for lp, m in zip(plan.layers, measure_layers(qmodel, plan), strict=True):
            assert m == lp
        support = {n: int_weight(m) != 0 for n, m in quant_layers(qmodel).items()}
        return metrics, masks, support

    metrics, masks, support = run()
    assert metrics["finetune_regrown"] > 0
    outside = sum(int((support[n] & ~masks[n]).sum()) for n in masks)
    if metrics["finetune_best_epoch"] > 0:  # the kept epoch came after a regrowth step
        assert outside > 0, "regrowth never moved a weight outside the searched masks"
    assert len(counts) > 4 * 4 * 4
    again_metrics, _, again = run()
    for key in ("finetune_regrown", "finetune_val_history", "finetune_best_epoch"):
        assert again_metrics[key] == metrics[key]
    for n in support:
        assert torch.equal(support[n], again[n])


def test_regrow_must_be_a_fraction(trained):
    qmodel, _, masks = _build(trained)
    with pytest.raises(ConfigError, match="regrow"):
        finetune(qmodel, masks, _small(trained[2]), epochs=1, regrow=1.5, progress=False)


def test_distillation_learns_from_the_teacher_not_the_labels(trained):
    """distill=1 trains on the float model's soft targets alone: scrambled labels give the very
    same weights; at distill=0 (cross-entropy) they do not, and a mixed weight is a third run."""
    model, _, data, _ = trained
    data = _small(data, 384)
    scrambled = dataclasses.replace(
        data, y_train=torch.roll(torch.as_tensor(data.y_train), 1).numpy()
    )

    def weights(d, distill):
        qmodel, _, masks = _build(trained)
        finetune(qmodel, masks, d, epochs=2, seed=0, teacher=model, distill=distill, progress=False)
        return [m.weight.detach().clone() for m in quant_layers(qmodel).values()]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    kd = weights(data, 1.0)
    assert same(kd, weights(scrambled, 1.0))
    qmodel, _, masks = _build(trained)
    metrics = finetune(qmodel, masks, data, epochs=1, teacher=model, distill=0.3, progress=False)
    assert metrics["finetune_distill"] == 0.3
    assert not same(weights(data, 0.0), weights(scrambled, 0.0))
    assert not same(kd, weights(data, 0.5))
    assert model.training is False  # the teacher is left as it was


def test_sparse_plans_train_on_the_labels_even_with_a_teacher(trained):
    """A plan whose pruned layers keep ≤ 20 % of their weights is fine-tuned on the labels (and
    regrown), distillation or not: scrambled labels change the result, and none is recorded."""
    model, _, data, _ = trained
    data = _small(data, 384)
    scrambled = dataclasses.replace(
        data, y_train=torch.roll(torch.as_tensor(data.y_train), 1).numpy()
    )
    runs = []
    for d in (data, scrambled):
        qmodel, _, masks = _build(trained, sparsity=0.9)
        m = finetune(qmodel, masks, d, epochs=2, teacher=model, distill=1.0, progress=False)
        assert "finetune_distill" not in m
        runs.append([w.weight.detach().clone() for w in quant_layers(qmodel).values()])
    assert not all(torch.equal(x, y) for x, y in zip(*runs, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"distill": 1.5}, "distill must be a weight"), ({"distill": 0.5}, "needs a teacher")],
)
def test_distill_needs_a_weight_and_a_teacher(trained, kwargs, pattern):
    qmodel, _, masks = _build(trained)
    with pytest.raises(ConfigError, match=pattern):
        finetune(qmodel, masks, _small(trained[2]), epochs=1, progress=False, **kwargs)
