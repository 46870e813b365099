"""The backend contract (``xsam_fast/backends/base.py``) as data: cases, runners, tolerances.

A *case* is a set of tensor lists (params, points, backups, grads, bufs, sq) of one
dtype and layout, plus the device-scalar vector ``sc`` and a bucket's ``hyper``.
:func:`run_phase` runs one phase of a backend on a copy of a case; the test suite
(``test_backend_contract.py``) runs every registered backend
(:data:`BACKENDS`) and the reference on the same case and compares them with
:func:`assert_case_matches`. Tolerances follow the dtype: float64 1e-12 and
float32 1e-6 relative (to the largest magnitude of the tensor), 16-bit results
within one unit in the last place of the stored value; a failure names the list,
the tensor and its first mismatching element.

A backend under test is registered in :data:`BACKENDS` (name -> :class:`Target`);
its module adds itself there when it can run here, and says why not otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from xsam_fast.backends import base as B
from xsam_fast.backends.base import Backend
from xsam_fast.backends.reference import ReferenceBackend

REFERENCE = ReferenceBackend()

#: sizes that do not divide the vector width or the work item, a 0-size tensor, item edges
SIZES = [1, 3, 7, 0, 1023, 4097, 32767, 32768, 32769, 70001]
#: a small set, for backends that run slowly here (Triton's interpreter)
SMALL_SIZES = [1, 3, 0, 77, 1030, 4099]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
#: the one spelling of dtypes in test ids
DTYPE_IDS = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}
RELATIVE = {torch.float64: 1e-12, torch.float32: 1e-6}
ETAS = {"plain": None, "asam": 0.05}
LAYOUTS = ("contiguous", "channels_last", "misaligned")

SGD_CASES = {
    "plain": dict(
        lr=0.1,
        weight_decay=0.0,
        momentum=0.0,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        init_bufs=False,
    ),
    "momentum-wd": dict(
        lr=0.05,
        weight_decay=1e-3,
        momentum=0.9,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        init_bufs=False,
    ),
    "nesterov-dampening": dict(
        lr=0.05,
        weight_decay=5e-4,
        momentum=0.9,
        dampening=0.1,
        nesterov=True,
        maximize=False,
        init_bufs=False,
    ),
    "init-maximize": dict(
        lr=0.05,
        weight_decay=1e-3,
        momentum=0.8,
        dampening=0.0,
        nesterov=False,
        maximize=True,
        init_bufs=True,
    ),
}
ADAM_CASES = {
    "adamw": dict(
        lr=1e-3,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.01,
        decoupled=True,
        maximize=False,
        step=3.0,
    ),
    "adam-l2-maximize": dict(
        lr=1e-2,
        beta1=0.3,
        beta2=0.99,
        eps=1e-6,
        weight_decay=1e-3,
        decoupled=False,
        maximize=True,
        step=1.0,
    ),
    "adam-no-decay": dict(
        lr=3e-4,
        beta1=0.8,
        beta2=0.95,
        eps=1e-8,
        weight_decay=0.0,
        decoupled=True,
        maximize=False,
        step=1234.0,
    ),
}
COEFFS = (0.37, -1.3)
RADIUS = 0.013
SUMSQ = 0.7


@dataclasses.dataclass
class Target:
    """A backend under test: how to make it, and the tensors it takes."""

    make: Callable[[], Backend]
    device: str = "cpu"
    sizes: tuple[int, ...] = tuple(SIZES)
    #: phases it cannot run here, with the reason (e.g. a GPU-only path)
    unsupported: dict[str, str] = dataclasses.field(default_factory=dict)


#: name -> Target, or name -> str (why it cannot run here); filled by ``backends_under_test``
BACKENDS: dict[str, Target | str] = {}


def acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------ cases
def _shape(n: int, layout: str) -> tuple[int, ...]:
    """A 4-d shape of ``n`` elements for channels_last (n = c * h * w, c > 1 where possible)."""
    if layout != "channels_last":
        return (n,)
    for c in (3, 5, 7, 2):
        if n % c == 0 and n // c > 1:
            return (1, c, n // c, 1) if (n // c) % 2 else (1, c, 2, n // c // 2)
    return (1, n, 1, 1)


def _make(
    values: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, layout: str, device: str
) -> torch.Tensor:
    """A tensor of ``values`` with ``shape``, ``dtype``, on ``device``, in ``layout``."""
    t = values.to(dtype).reshape(shape).to(device)
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "misaligned":  # a view at a 1-element offset: not 16-byte aligned
        store = torch.empty(t.numel() + 1, dtype=dtype, device=device)
        view = store[1:].view(shape)
        view.copy_(t)
        return view
    return t.contiguous()


def make_case(
    dtype: torch.dtype, sizes=SIZES, seed: int = 0, layout: str = "contiguous", device: str = "cpu"
) -> dict[str, list[torch.Tensor]]:
    """Random lists: params, points (= params moved by an ascent), backups, grads, bufs, sq.

    Every list has the same shapes and strides; with ``layout="misaligned"`` every
    tensor is a view one element into its storage.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = [_shape(n, layout) for n in sizes]

    def rand(scale: float = 1.0) -> list[torch.Tensor]:
        return [scale * torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]

    backups, grads, bufs, sq = rand(), rand(0.5), rand(0.1), [t.abs() for t in rand(0.01)]
    points = [b + 0.05 * g for b, g in zip(backups, grads)]

    def build(values: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_make(v, s, dtype, layout, device) for v, s in zip(values, shapes)]

    return dict(
        params=build(points),
        points=build(points),
        backups=build(backups),
        grads=build(grads),
        bufs=build(bufs),
        sq=build(sq),
    )


def clone_case(case: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """A deep copy that keeps every tensor's strides and storage offset (layout)."""

    def copy(t: torch.Tensor) -> torch.Tensor:
        store = torch.empty(
            t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device=t.device
        )
        out = store.as_strided(t.shape, t.stride(), t.storage_offset())
        out.copy_(t)
        return out

    return {k: [copy(t) for t in v] for k, v in case.items()}


def make_sc(
    device: str = "cpu",
    *,
    eps: float = 1e-12,
    alpha: float = 0.7,
    max_norm: float = -1.0,
    found_inf: bool = False,
    coeffs: tuple[float, float] = COEFFS,
    sumsq: float = SUMSQ,
    sums: tuple[float, float, float] = (0.9, 0.04, 0.1),
) -> torch.Tensor:
    """A device-scalar vector with the given entries (float64)."""
    sc = torch.zeros(B.NSCALARS, dtype=torch.float64)
    sc[B.EPS], sc[B.ALPHA], sc[B.MAX_NORM] = eps, alpha, max_norm
    sc[B.FOUND_INF] = float(found_inf)
    sc[B.OK] = 1.0 - float(found_inf)
    sc[B.C_D], sc[B.C_G] = coeffs
    sc[B.SUMSQ] = sumsq
    sc[B.GG], sc[B.DD], sc[B.DG] = sums
    return sc.to(device)


def sgd_hyper(h: dict, device: str = "cpu") -> torch.Tensor:
    hyper = torch.zeros(B.NHYPER, dtype=torch.float64)
    hyper[B.H_RADIUS] = RADIUS
    hyper[B.H_LR], hyper[B.H_WEIGHT_DECAY] = h["lr"], h["weight_decay"]
    hyper[B.H_MOMENTUM], hyper[B.H_DAMPENING] = h["momentum"], h["dampening"]
    return hyper.to(device)


def adam_hyper(h: dict, device: str = "cpu") -> torch.Tensor:
    hyper = torch.zeros(B.NHYPER, dtype=torch.float64)
    hyper[B.H_RADIUS] = RADIUS
    hyper[B.H_LR], hyper[B.H_WEIGHT_DECAY] = h["lr"], h["weight_decay"]
    hyper[B.H_BETA1], hyper[B.H_BETA2], hyper[B.H_ADAM_EPS] = h["beta1"], h["beta2"], h["eps"]
    return hyper.to(device)


# ------------------------------------------------------------------ phases
#: every phase of the contract and the case keys it may write
PHASES = (
    "sumsq",
    "sumsq_accumulate",
    "final_sums",
    "final_sums_accumulate",
    "backup_ascent",
    "ascent",
    "write_point",
    "write_grad_restore",
    "sgd_update",
    "adam_update",
)


def run_phase(
    backend: Backend,
    phase: str,
    case: dict[str, list[torch.Tensor]],
    sc: torch.Tensor,
    *,
    eta: float | None = None,
    hyper: dict | None = None,
) -> None:
    """Runs ``phase`` of ``backend`` on ``case`` and ``sc`` (both mutated in place)."""
    c = {k: v for k, v in case.items()}
    params = backend.pack(c["params"])

    def pack(key: str):
        return backend.pack(c[key], like=params)

    if phase in ("sumsq", "sumsq_accumulate"):
        backend.sumsq(
            pack("grads"),
            sc[B.SUMSQ : B.SUMSQ + 1],
            accumulate=phase.endswith("accumulate"),
            weights=pack("backups"),
            eta=eta,
        )
    elif phase in ("final_sums", "final_sums_accumulate"):
        backend.final_sums(
            pack("points"),
            pack("backups"),
            pack("grads"),
            sc[B.SUMS],
            accumulate=phase.endswith("accumulate"),
            eta=eta,
        )
    elif phase in ("backup_ascent", "ascent"):
        hyper_t = sgd_hyper(SGD_CASES["plain"], str(sc.device))
        backend.backup_ascent(
            params,
            pack("grads"),
            pack("backups"),
            sc,
            hyper_t,
            backup=phase == "backup_ascent",
            eta=eta,
        )
    elif phase == "write_point":
        coeffs = torch.tensor(COEFFS, dtype=torch.float64, device=sc.device)
        backend.write_point(params, pack("points"), pack("backups"), pack("grads"), coeffs, eta=eta)
    elif phase == "write_grad_restore":
        backend.write_grad_restore(
            params, params, pack("backups"), pack("grads"), sc[B.COEFFS], eta=eta
        )
    elif phase == "sgd_update":
        h = hyper or SGD_CASES["momentum-wd"]
        bufs = pack("bufs") if h["momentum"] != 0 else None
        backend.sgd_update(
            params,
            params,
            pack("backups"),
            pack("grads"),
            bufs,
            sc,
            sgd_hyper(h, str(sc.device)),
            weight_decay=h["weight_decay"] != 0,
            momentum=h["momentum"] != 0,
            nesterov=h["nesterov"],
            maximize=h["maximize"],
            init_bufs=h["init_bufs"],
            eta=eta,
        )
    elif phase == "adam_update":
        h = hyper or ADAM_CASES["adamw"]
        steps = torch.full((len(params),), h["step"], dtype=torch.float32, device=sc.device)
        backend.adam_update(
            params,
            params,
            pack("backups"),
            pack("grads"),
            pack("bufs"),
            pack("sq"),
            steps,
            sc,
            adam_hyper(h, str(sc.device)),
            weight_decay=h["weight_decay"] != 0,
            decoupled=h["decoupled"],
            maximize=h["maximize"],
            eta=eta,
        )
    else:
        raise ValueError(phase)


# ------------------------------------------------------------------ comparisons
def ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of ``t``'s dtype at ``|t|``, in float64."""
    a = t.abs()
    return (torch.nextafter(a, torch.full_like(a, float("inf"))) - a).double()


def assert_tensor_matches(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}"
    )
    if got.numel() == 0:
        return
    got, want = got.cpu().reshape(-1), want.cpu().reshape(-1)
    diff = (got.double() - want.double()).abs()
    both_nan = got.isnan() & want.isnan()
    if got.dtype in RELATIVE:
        bound = RELATIVE[got.dtype] * max(want.double().abs().nan_to_num().max().item(), 1e-30)
        bad = (diff > bound) & ~both_nan
    else:
        bad = (diff > ulp(want)) & ~both_nan
    bad |= got.isnan() != want.isnan()
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.numel()} elements off; first at "
            f"{i}: got {got[i].item()!r}, want {want[i].item()!r}"
        )


def assert_case_matches(got: dict, want: dict) -> None:
    for key in want:
        for i, (g, w) in enumerate(zip(got[key], want[key])):
            assert_tensor_matches(g, w, f"{key}[{i}]")


def assert_scalars_match(
    got: torch.Tensor, want: torch.Tensor, entries, what: str, rel: float = 1e-12
) -> None:
    """Entries of two float64 scalar vectors, relatively close (NaN equals NaN)."""
    got, want = got.cpu(), want.cpu()
    for k in entries:
        g, w = got[k].item(), want[k].item()
        same = g == w or (g != g and w != w)  # infinities, NaN
        if not same and not abs(g - w) <= rel * max(abs(w), 1e-300) + 1e-300:
            raise AssertionError(f"{what}: sc[{k}] = {g!r}, reference {w!r}")
