"""FIT predicts damage: on a trained digits-mlp, FIT ranks random mixed-precision weight
configurations (no fine-tuning) like the increase of the test loss they cause.

Weight-only: each layer's weights are quantized with the built model's quantizer at a random
bit width in 2..8; activations stay float, so FIT is evaluated with its weight terms only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fitc.fisher import estimate_fisher
from fitc.models import build_model, get_spec, load_data, train_float
from fitc.search import fit_value
from fitc.space import quantize_weight

scipy_stats = pytest.importorskip("scipy.stats")

N_CONFIGS = 24


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_rank_correlates_with_test_loss_increase():
    data = load_data(get_spec("digits-mlp"), seed=0)
    model = build_model("digits-mlp", seed=0)
    train_float(model, data, seed=0, progress=False)
    model.eval()
    X, y = torch.as_tensor(data.X_train), torch.as_tensor(data.y_train)
    Xt, yt = torch.as_tensor(data.X_test), torch.as_tensor(data.y_test)
    fisher = estimate_fisher(model, X, y, seed=0)
    layers = dict(model.named_modules())
    floats = {n: layers[n].weight.detach().clone() for n in fisher.layers}
    with torch.no_grad():
        base = F.cross_entropy(model(Xt), yt).item()

    rng = np.random.default_rng(0)
    fits, damage = [], []
    for _ in range(N_CONFIGS):
        bits = {n: int(rng.integers(2, 9)) for n in fisher.layers}
        with torch.no_grad():
            for n, b in bits.items():
                layers[n].weight.copy_(quantize_weight(floats[n], b))
            damage.append(F.cross_entropy(model(Xt), yt).item() - base)
            for n in bits:
                layers[n].weight.copy_(floats[n])
        fits.append(fit_value(fisher, bits, {}))

    rho = scipy_stats.spearmanr(fits, damage).statistic
    assert rho >= 0.7, f"Spearman(FIT, test-loss increase) = {rho:.3f} over {N_CONFIGS} configs"
