"""Triton-specific behaviour of the Triton backend, on CPU tensors under Triton's interpreter.

What every backend must compute (each phase, dtype, layout, the device scalars, the
skip flag, packing rules) is checked by ``test_backend_contract.py`` (targets
``triton-interpreter`` and, on a GPU, ``triton-cuda``). Here: what only this
backend has: its cached tables, one launch per phase whatever the number of
tensors, int64 offsets, per-tensor alignment within a launch, bfloat16 rounding
done on the bits, its own arccos and Adam bias corrections (core operations
only), its argument checks and availability messages.

The module-scoped fixture ``tm`` reloads the kernel modules for the interpreter
(``triton_modules.reload``) and restores the session's setting afterwards, so
that later tests see the backend as this machine has it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import triton_modules  # noqa: E402
from benchmarks.triton_launches import KernelLaunches  # noqa: E402
import xsam_fast.backends as registry  # noqa: E402
from backend_contract import (
    ADAM_CASES,
    DTYPE_IDS,
    PHASES,
    REFERENCE,
    SGD_CASES,
    assert_case_matches,
    clone_case,
    make_case,
    make_sc,
    run_phase,
)
from xsam_fast.backends import base as B  # noqa: E402
from xsam_fast.backends.packed import LayoutError, TensorList  # noqa: E402

BLOCK = 256
SIZES = [1, 3, 1030, 0, 700, 257, 256]


@pytest.fixture(scope="module")
def tm():
    """``xsam_fast.backends.triton`` with its kernels built for the interpreter."""
    module = triton_modules.reload(interpret=True)
    assert module.TritonBackend.is_available() == (True, "")
    yield module
    triton_modules.restore()
    # later tests see the backend as this machine has it
    expected = triton_modules.SESSION_SETTING == "1" or torch.cuda.is_available()
    assert ("triton" in registry.available_backends()) == expected


@pytest.fixture
def tb(tm):
    return tm.TritonBackend(block=BLOCK)


def _phase_matches(backend, phase, case, sc, **kwargs):
    """Runs ``phase`` on copies of ``case`` with ``backend`` and the reference; compares."""
    got, want = clone_case(case), clone_case(case)
    got_sc, want_sc = sc.clone(), sc.clone()
    run_phase(backend, phase, got, got_sc, **kwargs)
    run_phase(REFERENCE, phase, want, want_sc, **kwargs)
    assert_case_matches(got, want)
    rel = 1e-12 if case["params"][0].dtype == torch.float64 else 1e-5
    assert torch.allclose(got_sc, want_sc, rtol=rel, atol=0), (phase, got_sc, want_sc)


# ------------------------------------------------------------------ availability
def test_available_and_supports_under_interpreter(tm, tb):
    assert tm.TritonBackend.name == "triton"
    for dtype in DTYPE_IDS:
        assert tb.supports(torch.device("cpu"), dtype)
    assert not tb.supports(torch.device("cpu"), torch.int32)
    assert not tb.supports(torch.device("cuda"), torch.float32)  # interpreter: CPU tensors
    assert registry.get_backend("triton", torch.device("cpu"), torch.float32).name == "triton"


def test_unavailable_without_cuda_or_interpreter(tm, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the backend is available")
    monkeypatch.setattr(tm.config, "INTERPRET", False)
    ok, why = tm.TritonBackend.is_available()
    assert not ok and "CUDA" in why and "TRITON_INTERPRET" in why
    assert not tm.TritonBackend().supports(torch.device("cpu"), torch.float32)


def test_unavailable_without_triton(tm, monkeypatch):
    monkeypatch.setattr(tm, "config", None)
    monkeypatch.setattr(tm, "_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    ok, why = tm.TritonBackend.is_available()
    assert not ok and why.startswith("triton is not importable") and "triton" in why
    with pytest.raises(RuntimeError, match="not importable"):
        tm.TritonBackend()


def test_block_must_be_power_of_two(tm):
    with pytest.raises(ValueError, match="power of two"):
        tm.TritonBackend(block=1000)


# ------------------------------------------------------------------ misuse is loud
def test_pack_refuses_what_the_kernels_cannot_run(tb):
    with pytest.raises(LayoutError, match="cannot run"):
        tb.pack([torch.zeros(3, dtype=torch.int32)])
    params = tb.pack([torch.zeros(3), torch.zeros(5)])
    with pytest.raises(LayoutError, match="packed like"):
        tb.pack(
            [torch.zeros(3, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)], like=params
        )
    with pytest.raises(TypeError):
        tb.pack([torch.zeros(3), torch.zeros(5)], like=TensorList(params.tensors))


def test_phases_refuse_lists_that_do_not_line_up(tb):
    case = make_case(torch.float32, [5, 9])
    params = tb.pack(case["params"])
    other = tb.pack([torch.zeros(9), torch.zeros(5)])
    sc, hyper = make_sc(), torch.zeros(B.NHYPER, dtype=torch.float64)
    with pytest.raises(LayoutError, match="same device, dtype, shapes"):
        tb.final_sums(params, params, other, sc[B.SUMS], accumulate=False)
    with pytest.raises(TypeError, match="packed by the triton backend"):
        tb.backup_ascent(case["params"], params, params, sc, hyper, backup=True)
    with pytest.raises(ValueError, match="sc must be"):
        tb.backup_ascent(params, params, params, sc.float(), hyper, backup=True)
    with pytest.raises(ValueError, match="hyper must be"):
        tb.backup_ascent(params, params, params, sc, hyper[:2], backup=True)
    with pytest.raises(ValueError, match="out must be"):
        tb.sumsq(params, sc[B.SUMS], accumulate=False)
    with pytest.raises(ValueError, match="steps must be"):
        tb.adam_update(
            params,
            params,
            params,
            params,
            params,
            params,
            torch.ones(1),
            sc,
            hyper,
            weight_decay=False,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(ValueError, match="weights"):
        tb.sumsq(params, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, eta=0.1)


# ------------------------------------------------------------------ tables
def test_tables_are_built_once_and_rebuilt_only_on_change(tb):
    case = make_case(torch.float32, SIZES)
    params = tb.pack(case["params"])
    assert tb.packer.builds == 2  # the layout and the params' pointer table
    again = tb.pack(case["params"])
    assert tb.packer.builds == 2 and again.table is params.table
    grads = tb.pack(case["grads"], like=params)
    assert grads.layout is params.layout and tb.packer.builds == 3  # a pointer table only
    tb.pack(case["grads"], like=params)
    assert tb.packer.builds == 3  # the same gradients again: nothing
    tb.pack([g.clone() for g in case["grads"]], like=params)
    assert tb.packer.builds == 4  # reallocated gradients: their pointer table only
    alone = tb.pack(case["backups"])  # same shapes and strides, packed on its own
    assert alone.layout is params.layout and tb.packer.builds == 5
    tb.pack(make_case(torch.float32, SIZES, layout="channels_last")["params"])
    assert tb.packer.builds == 7  # other strides: a layout of its own
    sc = make_sc()
    tb.final_sums(params, alone, grads, sc[B.SUMS], accumulate=False)
    tb.sumsq(grads, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=True)
    assert tb.packer.builds == 7  # launches build nothing


def test_a_packed_list_keeps_its_chunking(tm, tb):
    """Lists packed by a backend with another block size step correctly: a launch
    follows the work list of its lists, whichever backend runs it."""
    case = make_case(torch.float32, SIZES)
    packed_by = tm.TritonBackend(block=1024)
    sc = make_sc()

    class Mixed:  # packs params with one backend, runs the phase with the other
        def __getattr__(self, name):
            return getattr(packed_by if name == "pack" else tb, name)

    _phase_matches(Mixed(), "sgd_update", case, sc)
    assert packed_by.pack(case["params"]).layout.block == 1024


# ------------------------------------------------------------------ launches
EXPECTED_LAUNCHES = {
    "sumsq": 2,
    "sumsq_accumulate": 2,
    "final_sums": 2,
    "final_sums_accumulate": 2,
}  # partials, then the fixed-order sum; others 1


def test_one_launch_per_phase_whatever_the_number_of_tensors(tb):
    counts = {}
    with KernelLaunches() as launches:  # the benchmarks' launch counter
        for n in (3, 30):
            case = make_case(torch.float32, [(17 * i) % 600 + 1 for i in range(n)])
            for phase in PHASES:
                before = launches.count
                run_phase(tb, phase, clone_case(case), make_sc())
                counts[phase, n] = launches.count - before
            for name in ("ascent_scalars", "update_scalars", "plain_scalars"):
                before = launches.count
                kwargs = dict(first=True) if name == "ascent_scalars" else {}
                getattr(tb, name)(make_sc(), check=True, **kwargs)
                counts[name, n] = launches.count - before
    for (phase, n), count in counts.items():
        assert count == EXPECTED_LAUNCHES.get(phase, 1), (phase, n, counts)


# ------------------------------------------------------------------ offsets and alignment
@pytest.mark.parametrize("phase", PHASES)
def test_int64_offsets(tm, monkeypatch, phase):
    """The int64-offset path (tensors > 2**31 - 1 - block elements), forced on small
    tensors by a lower limit."""
    monkeypatch.setattr(triton_modules.kernel_module("packing"), "INT32_LIMIT", 300)
    tb = tm.TritonBackend(block=BLOCK)
    case = make_case(torch.float32, SIZES)
    assert tb.pack(case["params"]).layout.large
    _phase_matches(tb, phase, case, make_sc(), eta=0.05 if phase == "final_sums" else None)


def _mixed_alignment_case(dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    """Tensors spanning several chunks, some at a 16-byte aligned address in every list,
    some misaligned in every list, and one misaligned in one list only (grads)."""
    sizes = [1030, 700, 1030, 700, 515]
    aligned, misaligned = make_case(dtype, sizes), make_case(dtype, sizes, layout="misaligned")
    case = {
        k: [
            aligned[k][0],
            misaligned[k][1],
            misaligned[k][2],
            aligned[k][3],
            (misaligned if k == "grads" else aligned)[k][4],
        ]
        for k in aligned
    }
    for k, ts in case.items():
        assert [t.data_ptr() % 16 == 0 for t in ts] == [True, False, False, True, k != "grads"], k
    return case


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("phase", PHASES)
def test_aligned_and_misaligned_tensors_in_one_launch(tb, phase, dtype):
    """Each tensor takes its own path (hinted, unhinted, masked) within one launch."""
    hyper = {
        "sgd_update": SGD_CASES["nesterov-dampening"],
        "adam_update": ADAM_CASES["adam-l2-maximize"],
    }.get(phase)
    _phase_matches(tb, phase, _mixed_alignment_case(dtype), make_sc(), hyper=hyper)


# ------------------------------------------------------------------ bf16 rounding
@pytest.mark.filterwarnings("ignore:overflow encountered")  # 3.3e38 + 3.3e38 -> inf, on purpose
def test_bf16_stores_round_to_nearest_even(tb):
    # b + g is exact in fp32 and exactly half-way between two bf16 values: ties go to even
    half_ulp = 2.0**-8
    b = torch.tensor([1.0, 1.0 + 2 * half_ulp, -1.0, 3.0, 1e-39, 3.3e38, 0.0], dtype=torch.bfloat16)
    g = torch.tensor(
        [half_ulp, half_ulp, -half_ulp, 2.0**-7 + 2.0**-15, 1e-41, 3.3e38, float("nan")],
        dtype=torch.float32,
    )
    g16 = g.to(torch.bfloat16)
    exact = b.double()[:5] + g16.double()[:5]  # the finite sums are exact in fp32
    assert torch.equal((b.float()[:5] + g16.float()[:5]).double(), exact)
    out = [torch.empty_like(b)]
    packed = tb.pack([b])
    tb.write_point(
        tb.pack(out, like=packed),
        packed,
        packed,
        tb.pack([g16], like=packed),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    expected = (b.float() + g16.float()).to(torch.bfloat16)  # torch rounds to nearest even
    assert torch.equal(out[0][:-1].view(torch.int16), expected[:-1].view(torch.int16))
    assert out[0][-1].isnan()
    # the tie cases really are ties, and they went to the even neighbour
    assert float(out[0][0]) == 1.0 and float(out[0][1]) == 1.0 + 2.0**-6


# ------------------------------------------------------------------ scalar math
def _acos_kernel(x, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x + offs, mask=mask, other=0.0)
    tl.store(out + offs, scalars_module().acos(x), mask=mask)


def _bias_kernel(hyper, steps, out):
    t = tl.program_id(0)
    step_size, bc2_sqrt = scalars_module().adam_bias_corrections(hyper, steps, t)
    tl.store(out + 2 * t, step_size)
    tl.store(out + 2 * t + 1, bc2_sqrt)


def scalars_module():
    """The scalar kernels' module (its device functions, built for the interpreter)."""
    return triton_modules.kernel_module("scalars")


def _first_off(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    bad = ~((got == want) | (np.abs(got - want) <= bound))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.size} off; first at {i}: "
            f"got {got[i]!r}, want {want[i]!r} (bound {bound[i]!r})"
        )


def test_acos_matches_numpy_on_a_dense_grid(tm):
    """arccos from core operations only, within 1e-15 relative of numpy on [-1, 1]
    (ends, +-1/2 where the formula changes, and near +-1 where psi is small)."""
    near_one = 1.0 - np.logspace(-17, 0, 3000)
    grid = np.concatenate(
        [
            np.linspace(-1.0, 1.0, 400001),
            near_one,
            -near_one,
            [
                1.0,
                -1.0,
                0.0,
                -0.0,
                0.5,
                -0.5,
                np.nextafter(0.5, 1.0),
                np.nextafter(-0.5, -1.0),
                5e-324,
            ],
        ]
    )
    x = torch.from_numpy(grid)
    out = torch.empty_like(x)
    block = 65536
    triton.jit(_acos_kernel)[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), BLOCK=block)
    want = np.arccos(grid)
    _first_off(out.numpy(), want, 1e-15 * np.abs(want), "acos")
    assert out[grid == 1.0].eq(0.0).all() and out[grid == -1.0].eq(math.pi).all()
    nan = torch.full((1,), math.nan, dtype=torch.float64)
    triton.jit(_acos_kernel)[(1,)](nan, nan, 1, BLOCK=16)
    assert nan.isnan().all()


def test_adam_bias_corrections_match_torch(tm):
    """``lr / (1 - beta1**step)`` and ``sqrt(1 - beta2**step)`` from exp2/log2 against
    torch.pow (float64): ``beta**step`` within about ``(1 + |step log2 beta|)`` ulps, an
    error that ``1 - beta**step`` scales by ``beta**step / (1 - beta**step)`` (as it
    does torch's own rounding)."""
    betas = [0.3, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 0.99999]
    steps = [1, 2, 3, 4, 5, 7, 10, 33, 100, 1234, 1e4, 1e5, 1e6, 1e7]
    pairs = [(b, s) for b in betas for s in steps]
    lr = 3e-4
    want_size, want_bc2, bound_size, bound_bc2, got = [], [], [], [], []
    for beta, step in pairs:
        hyper = torch.zeros(B.NHYPER, dtype=torch.float64)
        hyper[B.H_LR], hyper[B.H_BETA1], hyper[B.H_BETA2] = lr, beta, beta
        out = torch.empty(2, dtype=torch.float64)
        triton.jit(_bias_kernel)[(1,)](hyper, torch.tensor([step], dtype=torch.float32), out)
        got.append(out.numpy())
        power = torch.pow(
            torch.tensor(beta, dtype=torch.float64), torch.tensor(step, dtype=torch.float64)
        )  # as the reference does
        want_size.append((lr / (1.0 - power)).item())
        want_bc2.append(torch.pow(1.0 - power, 0.5).item())
        amplified = 4.4e-16 * (
            1 + (1 + abs(step * math.log2(beta))) * power.item() / (1.0 - power.item())
        )
        bound_size.append(amplified * want_size[-1])
        bound_bc2.append(amplified * want_bc2[-1])
    got = np.stack(got)
    _first_off(got[:, 0], np.array(want_size), np.array(bound_size), "step_size")
    _first_off(got[:, 1], np.array(want_bc2), np.array(bound_bc2), "bias_correction2_sqrt")
