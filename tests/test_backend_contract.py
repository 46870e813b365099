"""Every backend against the reference: backend x phase x dtype x {plain, asam} x layout.

The registered backends (``backends_under_test.py``: the C++ CPU kernels per
instruction set, Triton under its interpreter, the CUDA functors in a host
emulation, and on a GPU the Triton and CUDA backends themselves) each run every
phase of the contract (``xsam_fast/backends/base.py``) on the same case as the
reference backend, and must agree to the dtype's tolerance
(``backend_contract.py``). Also: the skip flag (``FOUND_INF``) in every phase that
reads it, the derived device scalars on ordinary and degenerate sums, packing
rules, empty lists, and deterministic reductions.
"""

from __future__ import annotations

import math

import pytest
import torch

import backends_under_test  # noqa: F401  (fills BACKENDS)
from backend_contract import (
    ADAM_CASES,
    BACKENDS,
    DTYPE_IDS,
    DTYPES,
    ETAS,
    LAYOUTS,
    REFERENCE,
    RELATIVE,
    SGD_CASES,
    Target,
    assert_case_matches,
    assert_scalars_match,
    clone_case,
    make_case,
    make_sc,
    run_phase,
)
from xsam_fast import coefficients
from xsam_fast.backends import base as B
from xsam_fast.backends.packed import LayoutError

NAMES = sorted(BACKENDS)


@pytest.fixture(autouse=True)
def _restore_defaults():
    yield
    backends_under_test.restore_defaults()


@pytest.fixture(params=NAMES)
def target(request) -> Target:
    entry = BACKENDS[request.param]
    if isinstance(entry, str):
        pytest.skip(f"{request.param}: {entry}")
    return entry


dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
etas = pytest.mark.parametrize("eta", list(ETAS.values()), ids=list(ETAS))
layouts = pytest.mark.parametrize("layout", LAYOUTS)


def _run_both(
    target: Target, phase: str, dtype, eta, layout, sc_kwargs=None, hyper=None, sizes=None
):
    """(got case, got sc, want case, want sc) of ``phase`` on one case."""
    if phase in target.unsupported:
        pytest.skip(target.unsupported[phase])
    case = make_case(dtype, sizes or target.sizes, layout=layout, device=target.device)
    sc = make_sc(target.device, **(sc_kwargs or {}))
    got_case, want_case = clone_case(case), clone_case(case)
    got_sc, want_sc = sc.clone(), sc.clone()
    run_phase(target.make(), phase, got_case, got_sc, eta=eta, hyper=hyper)
    run_phase(REFERENCE, phase, want_case, want_sc, eta=eta, hyper=hyper)
    return got_case, got_sc, want_case, want_sc


def _sums_close(got_sc, want_sc, entries, dtype, what):
    """Reductions run in the accumulation dtype: relative to the largest sum."""
    rel = RELATIVE.get(dtype, RELATIVE[torch.float32])
    scale = max(abs(want_sc[k].item()) for k in entries)
    for k in entries:
        g, w = got_sc[k].item(), want_sc[k].item()
        assert abs(g - w) <= 8 * rel * scale + 1e-300, f"{what}: sc[{k}] = {g!r}, reference {w!r}"


# ------------------------------------------------------------------ every phase
@dtypes
@etas
@layouts
@pytest.mark.parametrize(
    "phase", ["sumsq", "sumsq_accumulate", "final_sums", "final_sums_accumulate"]
)
def test_reductions(target, phase, dtype, eta, layout):
    got_case, got_sc, want_case, want_sc = _run_both(target, phase, dtype, eta, layout)
    assert_case_matches(got_case, want_case)  # read only
    entries = [B.SUMSQ] if phase.startswith("sumsq") else [B.GG, B.DD, B.DG]
    _sums_close(got_sc, want_sc, entries, dtype, phase)
    others = [k for k in range(B.NSCALARS) if k not in entries]
    assert torch.equal(got_sc[others], want_sc[others]), "a reduction wrote outside its slots"


@dtypes
@etas
@layouts
@pytest.mark.parametrize("phase", ["backup_ascent", "ascent", "write_point", "write_grad_restore"])
def test_elementwise(target, phase, dtype, eta, layout):
    got_case, got_sc, want_case, want_sc = _run_both(target, phase, dtype, eta, layout)
    assert_case_matches(got_case, want_case)
    assert torch.equal(got_sc, want_sc), "an elementwise phase wrote a scalar"


@dtypes
@etas
@layouts
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_update(target, case, dtype, eta, layout):
    got_case, _, want_case, _ = _run_both(
        target, "sgd_update", dtype, eta, layout, hyper=SGD_CASES[case]
    )
    assert_case_matches(got_case, want_case)


@dtypes
@etas
@layouts
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_update(target, case, dtype, eta, layout):
    got_case, _, want_case, _ = _run_both(
        target, "adam_update", dtype, eta, layout, hyper=ADAM_CASES[case]
    )
    assert_case_matches(got_case, want_case)


# ------------------------------------------------------------------ the skip flag
@dtypes
@pytest.mark.parametrize(
    "phase,hyper",
    [
        ("sgd_update", SGD_CASES["momentum-wd"]),
        ("sgd_update", SGD_CASES["init-maximize"]),
        ("sgd_update", SGD_CASES["plain"]),
        ("adam_update", ADAM_CASES["adamw"]),
    ],
    ids=["sgd-momentum", "sgd-init", "sgd-plain", "adamw"],
)
def test_found_inf_restores_theta0_and_keeps_state(target, phase, hyper, dtype):
    """With FOUND_INF set (and NaN coefficients, as a bad step has), the update writes
    theta_0 back and leaves the state untouched (fresh momentum buffers: 0)."""
    sc_kwargs = dict(found_inf=True, coeffs=(math.nan, math.inf))
    got_case, _, want_case, _ = _run_both(
        target, phase, dtype, None, "contiguous", sc_kwargs=sc_kwargs, hyper=hyper
    )
    before = make_case(dtype, target.sizes, device=target.device)
    for i, (p, b) in enumerate(zip(got_case["params"], got_case["backups"])):
        assert torch.equal(p, b), f"params[{i}] is not theta_0"
    for key in ("bufs", "sq"):
        for i, (t, t0) in enumerate(zip(got_case[key], before[key])):
            if (
                key == "bufs"
                and phase == "sgd_update"
                and hyper["init_bufs"]
                and hyper["momentum"] != 0
            ):
                assert not t.any(), f"fresh bufs[{i}] not zeroed"
            else:
                assert torch.equal(t, t0), f"{key}[{i}] changed"
    assert_case_matches(got_case, want_case)


@dtypes
@pytest.mark.parametrize("phase", ["backup_ascent", "ascent"])
def test_found_inf_stops_the_ascent(target, phase, dtype):
    got_case, _, _, _ = _run_both(
        target, phase, dtype, None, "contiguous", sc_kwargs=dict(found_inf=True, sumsq=math.nan)
    )
    before = make_case(dtype, target.sizes, device=target.device)
    for i, (p, p0) in enumerate(zip(got_case["params"], before["params"])):
        assert torch.equal(p, p0), f"params[{i}] moved"
    if phase == "backup_ascent":
        for i, (b, p0) in enumerate(zip(got_case["backups"], before["params"])):
            assert torch.equal(b, p0), f"backups[{i}] is not the params"


@dtypes
def test_zero_denominator_ascent_moves_nothing(target, dtype):
    """``||g|| + eps = 0`` (a zero gradient, eps = 0): scale 0, not r / 0."""
    got_case, _, want_case, _ = _run_both(
        target, "ascent", dtype, None, "contiguous", sc_kwargs=dict(sumsq=0.0, eps=0.0)
    )
    before = make_case(dtype, target.sizes, device=target.device)
    for i, (p, p0) in enumerate(zip(got_case["params"], before["params"])):
        assert torch.equal(p, p0), f"params[{i}] moved"


# ------------------------------------------------------------------ device scalars
SUM_CASES = {
    "ordinary": dict(sums=(0.9, 0.04, 0.1)),
    "alpha-above-1": dict(sums=(0.9, 0.04, 0.1), alpha=1.7),
    "alpha-0": dict(sums=(0.9, 0.04, -0.15), alpha=0.0),
    "parallel": dict(sums=(4.0, 1.0, 2.0)),
    "anti-parallel": dict(sums=(4.0, 1.0, -2.0)),
    "cos-rounds-above-1": dict(sums=(4.0, 1.0, 2.0000000000000004), eps=0.0),
    "zero-d": dict(sums=(0.9, 0.0, 0.0)),
    "zero-d-eps-0": dict(sums=(0.9, 0.0, 0.0), eps=0.0),
    "zero-g-eps-0": dict(sums=(0.0, 0.04, 0.0), eps=0.0),
    "all-zero-eps-0": dict(sums=(0.0, 0.0, 0.0), eps=0.0),
    "clip": dict(sums=(0.9, 0.04, 0.1), max_norm=0.25),
    "clip-inactive": dict(sums=(0.9, 0.04, 0.1), max_norm=100.0),
    "clip-to-0": dict(sums=(0.9, 0.04, 0.1), max_norm=0.0),
    "nan": dict(sums=(math.nan, 0.04, 0.1)),
    "inf": dict(sums=(0.9, math.inf, 0.1)),
    "huge": dict(sums=(1e300, 1e-300, 1e-1)),
    "kept-flag": dict(sums=(0.9, 0.04, 0.1), found_inf=True),
}


@pytest.mark.parametrize("check", [True, False], ids=["check", "no-check"])
@pytest.mark.parametrize("sums", list(SUM_CASES))
def test_update_scalars(target, sums, check):
    if "update_scalars" in target.unsupported:
        pytest.skip(target.unsupported["update_scalars"])
    sc = make_sc(target.device, **SUM_CASES[sums])
    sc[B.SKIPPED] = 3.0
    got, want = sc.clone(), sc.clone()
    target.make().update_scalars(got, check=check)
    coefficients.update_scalars(want, check=check)
    assert_scalars_match(got, want, range(B.NSCALARS), f"update_scalars[{sums}]")
    finite = torch.isfinite(want[[B.C_D, B.C_G]]).all()
    assert finite or want[B.FOUND_INF] == 1 or not check


@pytest.mark.parametrize("first", [True, False], ids=["first", "later"])
@pytest.mark.parametrize("flag", [False, True], ids=["clear", "set"])
@pytest.mark.parametrize("sumsq", [0.7, 0.0, math.inf, math.nan])
@pytest.mark.parametrize("check", [True, False], ids=["check", "no-check"])
def test_ascent_and_plain_scalars(target, first, flag, sumsq, check):
    if "update_scalars" in target.unsupported:
        pytest.skip(target.unsupported["update_scalars"])
    backend = target.make()
    for name, run, ref in (
        (
            "ascent",
            lambda s: backend.ascent_scalars(s, first=first, check=check),
            lambda s: coefficients.ascent_scalars(s, first=first, check=check),
        ),
        (
            "plain",
            lambda s: backend.plain_scalars(s, check=check),
            lambda s: coefficients.plain_scalars(s, check=check),
        ),
    ):
        sc = make_sc(target.device, found_inf=flag, sumsq=sumsq)
        got, want = sc.clone(), sc.clone()
        run(got)
        ref(want)
        assert_scalars_match(got, want, range(B.NSCALARS), f"{name}_scalars")


def test_reference_scalars_never_nan_from_finite_sums():
    """The definition itself: finite sums and eps = 0 never give a NaN coefficient."""
    for name, kwargs in SUM_CASES.items():
        if name in ("nan", "inf"):
            continue
        sc = make_sc(**kwargs)
        coefficients.update_scalars(sc, check=True)
        assert torch.isfinite(sc).all(), (name, sc)


# ------------------------------------------------------------------ lists
def test_pack_checks_layout(target):
    backend = target.make()
    dev = target.device
    a = [torch.zeros(2, 3, device=dev), torch.zeros(5, device=dev)]
    packed = backend.pack(a)
    other_strides = [torch.zeros(3, 2, device=dev).t(), torch.zeros(5, device=dev)]
    if backend.name == "reference":  # any strides: it steps tensors, not memory
        backend.pack(other_strides, like=packed)
    else:
        with pytest.raises(LayoutError):
            backend.pack(other_strides, like=packed)
    with pytest.raises(LayoutError):
        backend.pack([torch.zeros(6, device=dev), torch.zeros(5, device=dev)], like=packed)
    with pytest.raises(LayoutError):
        backend.pack([torch.zeros(2, 3, device=dev)], like=packed)
    with pytest.raises(LayoutError):
        backend.pack(
            [torch.zeros(2, 3, device=dev, dtype=torch.float64), torch.zeros(5, device=dev)],
            like=packed,
        )


def test_fast_backends_refuse_overlapping_tensors(target):
    backend = target.make()
    if backend.name == "reference":
        pytest.skip("the reference backend takes any strides")
    with pytest.raises(LayoutError):
        backend.pack([torch.zeros(4, device=target.device).expand(3, 4)])


@dtypes
def test_empty_lists_and_zero_size_tensors(target, dtype):
    backend = target.make()
    dev = target.device
    for tensors in ([], [torch.zeros(0, dtype=dtype, device=dev)]):
        packed = backend.pack(tensors)
        sc = make_sc(dev)
        backend.sumsq(packed, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        backend.final_sums(packed, packed, packed, sc[B.SUMS], accumulate=False)
        assert sc[B.SUMSQ].item() == 0 and not sc[B.SUMS].any()
        sc[B.SUMSQ] = 2.0
        backend.sumsq(packed, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=True)
        assert sc[B.SUMSQ].item() == 2.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_reductions_are_deterministic(target, dtype):
    backend = target.make()
    case = make_case(dtype, target.sizes, seed=3, device=target.device)
    results = []
    for _ in range(3):
        sc = make_sc(target.device)
        grads = backend.pack(case["grads"])
        backend.sumsq(grads, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        backend.final_sums(
            backend.pack(case["points"]),
            backend.pack(case["backups"]),
            grads,
            sc[B.SUMS],
            accumulate=False,
        )
        results.append(sc.cpu())
    assert all(torch.equal(r, results[0]) for r in results)
