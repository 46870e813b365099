"""The trainer recipes (examples/): Lightning and Accelerate train exactly like the plain loop.

Each recipe trains the examples' BatchNorm CNN for a few XSAM steps on the CPU
(an alpha search on the first batch of each epoch, a per-step cosine schedule);
the parameters, BatchNorm statistics, per-step losses and searched alphas must
equal those of ``recipe_common.train_plain`` under the same seeds. Lightning and
Accelerate are optional dependencies (``pip install "xsam-fast[recipes]"``, also
in the ``test`` extra).
"""

from __future__ import annotations

import os

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


@pytest.fixture
def recipes(monkeypatch):
    """``examples/`` on sys.path (the recipes import ``recipe_common`` as scripts do)."""
    monkeypatch.syspath_prepend(EXAMPLES)
    import recipe_common

    return recipe_common


@pytest.fixture
def plain(recipes):
    cfg = recipes.RecipeConfig(epochs=2, samples=96, batch_size=32, width=4, lr=0.1)
    return cfg, recipes.train_plain(cfg)


def _assert_same_training(got, want, initial: torch.nn.Module) -> None:
    (model, opt, losses), (model_ref, opt_ref, losses_ref) = got, want
    assert len(losses) == len(losses_ref) == 6 and opt.step_count == opt_ref.step_count == 6
    assert [h["alpha"] for h in opt.search_history] == [h["alpha"] for h in opt_ref.search_history]
    assert len(opt.search_history) == 2
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_ref), atol=1e-6, rtol=1e-6)
    state, state_ref = model.state_dict(), model_ref.state_dict()
    assert list(state) == list(state_ref)
    for name in state:
        torch.testing.assert_close(
            state[name],
            state_ref[name],
            atol=1e-6,
            rtol=1e-6,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    moved = max(
        float((p - q).detach().abs().max())
        for p, q in zip(model_ref.parameters(), initial.parameters())
    )
    assert moved > 1e-3  # training did change the parameters


def test_lightning_recipe_matches_plain_loop(recipes, plain):
    pytest.importorskip("lightning")
    import lightning_xsam

    cfg, want = plain
    got = lightning_xsam.train_lightning(cfg)
    _assert_same_training(got, want, recipes.make_model(cfg))


def test_accelerate_recipe_matches_plain_loop(recipes, plain):
    pytest.importorskip("accelerate")
    import accelerate_xsam

    cfg, want = plain
    got = accelerate_xsam.train_accelerate(cfg)
    _assert_same_training(got, want, recipes.make_model(cfg))
