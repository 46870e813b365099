"""Phase-by-phase checks of a backend against the reference backend.

Any backend test module can run the same contract: build a case of tensor lists
with :func:`make_case`, run one phase on two copies with :func:`run_phase`, and
compare with :func:`assert_matches`. Tolerances follow the dtype: float64 1e-12
and float32 1e-6 relative (to the largest magnitude of the tensor), 16-bit
results within one unit in the last place of the stored value.
"""
from __future__ import annotations

from typing import Callable

import torch

from xsam_fast.backends.base import Backend
from xsam_fast.backends.reference import ReferenceBackend

REFERENCE = ReferenceBackend()
#: sizes that do not divide the vector width or the work item, a 0-size tensor, item edges
SIZES = [1, 3, 7, 0, 1023, 4097, 32767, 32768, 32769, 70001]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
RELATIVE = {torch.float64: 1e-12, torch.float32: 1e-6}

SGD_CASES = {
    "plain": dict(lr=0.1, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False,
                  maximize=False, init_bufs=False),
    "momentum-wd": dict(lr=0.05, weight_decay=1e-3, momentum=0.9, dampening=0.0,
                        nesterov=False, maximize=False, init_bufs=False),
    "nesterov-dampening": dict(lr=0.05, weight_decay=5e-4, momentum=0.9, dampening=0.1,
                               nesterov=True, maximize=False, init_bufs=False),
    "init-maximize": dict(lr=0.05, weight_decay=1e-3, momentum=0.8, dampening=0.0,
                          nesterov=False, maximize=True, init_bufs=True),
}
ADAM_CASES = {
    "adamw": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                  decoupled=True, maximize=False, step_size=1e-3 / (1 - 0.9**3),
                  bias_correction2_sqrt=(1 - 0.999**3) ** 0.5),
    "adam-l2-maximize": dict(lr=1e-2, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=1e-3,
                             decoupled=False, maximize=True, step_size=1e-2 / (1 - 0.3),
                             bias_correction2_sqrt=(1 - 0.99) ** 0.5),
}


def acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_case(dtype: torch.dtype, sizes=SIZES, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Random lists: params, points (= params moved by an ascent), backups, grads, bufs, sq."""
    gen = torch.Generator().manual_seed(seed)

    def rand(scale: float = 1.0) -> list[torch.Tensor]:
        return [(scale * torch.randn(n, generator=gen, dtype=torch.float64)).to(dtype)
                for n in sizes]

    backups = rand()
    grads = rand(0.5)
    points = [(b.double() + 0.05 * g.double()).to(dtype) for b, g in zip(backups, grads)]
    return dict(params=[p.clone() for p in points], points=points, backups=backups,
                grads=grads, bufs=rand(0.1), sq=[t.abs() for t in rand(0.01)])


def clone_case(case: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    return {k: [t.clone() for t in v] for k, v in case.items()}


def run_phase(backend: Backend, phase: str, case: dict[str, list[torch.Tensor]],
              dtype: torch.dtype, **hyper):
    """Runs ``phase`` of ``backend`` on ``case`` (mutated in place); returns any result."""
    c = case
    coeffs = torch.tensor([0.37, -1.3], dtype=acc(dtype))
    if phase == "sumsq":
        return backend.sumsq(c["grads"])
    if phase == "final_sums":
        return backend.final_sums(c["points"], c["backups"], c["grads"])
    if phase in ("backup_ascent", "ascent"):
        scale = torch.tensor(0.013, dtype=acc(dtype))
        return backend.backup_ascent(c["params"], c["grads"], c["backups"], scale,
                                     phase == "backup_ascent")
    if phase == "write_point":
        return backend.write_point(c["params"], c["points"], c["backups"], c["grads"], coeffs)
    if phase == "write_grad_restore":
        return backend.write_grad_restore(c["params"], c["params"], c["backups"], c["grads"],
                                          coeffs)
    if phase == "sgd_update":
        bufs = c["bufs"] if hyper["momentum"] != 0 else []
        return backend.sgd_update(c["params"], c["params"], c["backups"], c["grads"], bufs,
                                  coeffs, **hyper)
    if phase == "adam_update":
        return backend.adam_update(c["params"], c["params"], c["backups"], c["grads"], c["bufs"],
                                   c["sq"], coeffs, **hyper)
    raise ValueError(phase)


def ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of ``t``'s dtype at ``|t|``, in float64."""
    a = t.abs()
    return (torch.nextafter(a, torch.full_like(a, float("inf"))) - a).double()


def assert_tensor_matches(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if got.numel() == 0:
        return
    diff = (got.double() - want.double()).abs()
    if got.dtype in RELATIVE:
        bound = RELATIVE[got.dtype] * max(want.double().abs().max().item(), 1e-30)
        bad = diff > bound
    else:
        bad = diff > ulp(want)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {got.numel()} elements off; first at "
                             f"{i}: got {got[i].item()!r}, want {want[i].item()!r}")


def assert_matches(got_case, want_case, got_out, want_out) -> None:
    for key in got_case:
        for i, (g, w) in enumerate(zip(got_case[key], want_case[key])):
            assert_tensor_matches(g, w, f"{key}[{i}]")
    if want_out is not None:
        scale = want_out.double().abs().max().item()
        rel = 1e-12 if want_out.dtype == torch.float64 else 1e-6
        assert got_out.dtype == want_out.dtype, (got_out.dtype, want_out.dtype)
        assert torch.allclose(got_out.double(), want_out.double(), rtol=0, atol=rel * scale), \
            (got_out, want_out)


def check_phase(make_backend: Callable[[], Backend], phase: str, dtype: torch.dtype,
                sizes=SIZES, **hyper) -> None:
    """``phase`` of the backend equals the reference's on a fresh case."""
    case = make_case(dtype, sizes)
    got_case, want_case = clone_case(case), clone_case(case)
    got = run_phase(make_backend(), phase, got_case, dtype, **hyper)
    want = run_phase(REFERENCE, phase, want_case, dtype, **hyper)
    assert_matches(got_case, want_case, got, want)
