"""Shared small models, data and the two call sequences used by the optimizer tests.

Everything is tiny (MLPs and a 2-channel CNN with BatchNorm, a few samples) so
the whole suite stays fast on two cores. Test modules import the helpers with
``from conftest import ...`` (``tests/`` is on ``sys.path`` under pytest's
default import mode).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import pytest
import torch
from torch import nn

import xsam_fast

#: (atol, rtol) for parameters compared with the float64 re-derivation
TOLERANCES = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5)}


def make_mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """6 -> 7 -> 3 with tanh; sizes that divide nothing."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def make_cnn_bn(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """Conv -> BatchNorm -> tanh -> linear, input (N, 2, 5, 5)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3)
    ).to(dtype)


MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "mlp": (make_mlp, (6,)),
    "cnn_bn": (make_cnn_bn, (2, 5, 5)),
}


def make_batches(
    model_name: str,
    n_batches: int,
    dtype: torch.dtype = torch.float64,
    batch: int = 10,
    seed: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` (inputs, targets) pairs, reproducible, for the named model."""
    shape = MODELS[model_name][1]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn((batch, *shape), generator=gen, dtype=torch.float64).to(dtype)
        y = torch.randint(0, 3, (batch,), generator=gen)
        out.append((x, y))
    return out


def float64_copy(model: nn.Module) -> nn.Module:
    """An exact float64 copy (float32 -> float64 is exact)."""
    return copy.deepcopy(model).double()


criterion = nn.CrossEntropyLoss()


def authors_step(opt, model: nn.Module, x, y, steps: int, update_alpha: bool = False):
    """One step in the authors' train.py call sequence (BN helpers included)."""
    xsam_fast.enable_running_stats(model)
    opt.backup_param()
    for i in range(steps):
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.first_step(step=i)
        if i == 0:
            xsam_fast.disable_running_stats(model)
    loss = criterion(model(x), y)
    opt.zero_grad()
    loss.backward()
    out = opt.second_step(
        update_alpha=update_alpha, model=model, inputs=x, targets=y, criterion=criterion
    )
    xsam_fast.enable_running_stats(model)
    return out


def closure_step(opt, model: nn.Module, x, y, update_alpha: bool | None = False):
    """One step through ``opt.step(closure, search_loss=..., update_alpha=...)``."""

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure, search_loss=lambda: criterion(model(x), y), update_alpha=update_alpha)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


#: backends an optimizer can use in this process: the available ones, and Triton under its
#: CPU interpreter when Triton is installed (see :func:`backend_loaded`)
STEP_BACKENDS = list(xsam_fast.available_backends()) + (
    ["triton"] if _triton_importable() and "triton" not in xsam_fast.available_backends() else []
)


@contextlib.contextmanager
def backend_loaded(name: str):
    """Inside the block ``XSAM(backend=name)`` runs: for Triton without a GPU, its kernels
    are reloaded for the interpreter (and back afterwards)."""
    if name != "triton" or "triton" in xsam_fast.available_backends():
        yield
        return
    import triton_modules

    triton_modules.reload(interpret=True)
    try:
        yield
    finally:
        triton_modules.restore()


def buckets_of(opt) -> list:
    """The buckets the optimizer's step plan makes of the parameters that have a gradient."""
    return opt._stepper.prepare().buckets


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_params_close(
    actual: list[torch.Tensor],
    expected: list[torch.Tensor],
    atol: float,
    rtol: float,
    what: str = "",
) -> None:
    """Compare parameter lists in float64; the message names the tensor and the worst element."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(
            a.double(),
            e.double(),
            atol=atol,
            rtol=rtol,
            msg=lambda m, i=i: f"{what} param #{i}: {m}",
        )


@pytest.fixture
def mlp64() -> nn.Module:
    return make_mlp(torch.float64)


@pytest.fixture
def batches64() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return make_batches("mlp", 4, torch.float64)
