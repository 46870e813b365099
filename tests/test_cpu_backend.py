"""What is specific to the C++ CPU backend (``backend="cpu"``).

``test_backend_contract.py`` runs every phase of every instruction set this CPU has
against the reference backend (dtypes, plain/ASAM, layouts, the skip flag, scalars,
packing rules). Here: the default instruction set; exact 16-bit conversions (every bit
pattern, round to nearest even, subnormals, infinities, NaN); instruction sets agreeing
bit for bit; reductions bit-identical on 1, 2 and 3 threads and buckets of many work
items spread over threads; dense permutations other than channels_last; packed lists
reused across calls and re-pointed tensors; per-tensor Adam step counts; the switches
of ``sgd_update``; and the errors of packing and of calls.
"""

from __future__ import annotations

import math

import pytest
import torch

import xsam_fast
from backend_contract import (
    ADAM_CASES,
    DTYPE_IDS,
    DTYPES,
    ETAS,
    REFERENCE,
    SGD_CASES,
    adam_hyper,
    assert_case_matches,
    assert_tensor_matches,
    clone_case,
    make_case,
    make_sc,
    run_phase,
    sgd_hyper,
)
from xsam_fast.backends import base as B
from xsam_fast.backends.packed import LayoutError

if "cpu" not in xsam_fast.available_backends():
    pytest.skip(
        f"cpu backend unavailable: {xsam_fast.backend_status()['cpu']}", allow_module_level=True
    )

from xsam_fast.backends.cpu import CpuBackend  # noqa: E402

ISAS = CpuBackend.supported_isas()
ELEMENTWISE = [
    "backup_ascent",
    "ascent",
    "write_point",
    "write_grad_restore",
    "sgd_update",
    "adam_update",
]
#: many work items (32K elements each), with small tensors between them
THREAD_SIZES = [1_000_003, 17, 0, 250_000, 3, 70_001]

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
etas = pytest.mark.parametrize("eta", list(ETAS.values()), ids=list(ETAS))
half_dtypes = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one thread unless it sets its own count: these tensors are
    small, and on a shared, loaded machine each parallel region can wait milliseconds
    for a descheduled thread. The multi-threaded paths are checked bit for bit against
    one thread below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test with the kernels of one instruction set, then restores the default."""
    assert CpuBackend.set_isa(request.param) == request.param
    yield request.param
    CpuBackend.set_isa("auto")


def _with_threads(n: int, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _ascent_by(backend, params, grads, scale: float, *, backup: bool) -> torch.Tensor:
    """``params += scale * grads`` (1-tensor lists) through ``backup_ascent``: radius
    ``scale`` over ``sqrt(1) + 0``. Returns the backups."""
    backups = torch.empty_like(params)
    p = backend.pack([params])
    hyper = sgd_hyper(SGD_CASES["plain"])
    hyper[B.H_RADIUS] = scale
    backend.backup_ascent(
        p,
        backend.pack([grads], like=p),
        backend.pack([backups], like=p),
        make_sc(sumsq=1.0, eps=0.0),
        hyper,
        backup=backup,
    )
    return backups


# ------------------------------------------------------------------ the backend itself
def test_default_instruction_set_is_the_best_this_cpu_runs():
    assert CpuBackend.isa() == ISAS[0]
    assert ISAS[-1] == "generic"


def test_backend_reports_itself():
    backend = CpuBackend()
    assert CpuBackend.is_available() == (True, "")
    assert backend.supports(torch.device("cpu"), torch.bfloat16)
    assert not backend.supports(torch.device("cpu"), torch.int64)
    assert not backend.supports(torch.device("meta"), torch.float32)


# ------------------------------------------------------------------ exact 16-bit arithmetic
@half_dtypes
def test_every_16bit_value_widens_and_narrows_exactly(dtype, isa):
    """All 65,536 bit patterns: the backup is a bit-exact copy through float32, and
    ``p + 1 * 0`` is the value itself (signed zeros become +0, as in float32)."""
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    params = values.clone()
    backups = _ascent_by(CpuBackend(), params, torch.zeros_like(values), 1.0, backup=True)
    nan = values.isnan()
    assert backups[nan].isnan().all() and params[nan].isnan().all()
    assert torch.equal(backups.view(torch.int16)[~nan], bits[~nan])
    assert torch.equal(params[~nan].float(), values[~nan].float() + 0.0)


@half_dtypes
def test_16bit_stores_round_to_nearest_even_like_torch(dtype, isa):
    """``p + s * g`` with s a power of two is the same float32 value in both backends,
    so the stored 16-bit values must be identical: subnormals, overflow to infinity
    and ties included."""
    gen = torch.Generator().manual_seed(3)
    n = 1 << 16
    magnitude = torch.exp2(torch.empty(n).uniform_(-30, 18, generator=gen))
    a = (magnitude * torch.randn(n, generator=gen).sign()).to(dtype)
    g = (magnitude * torch.empty(n).uniform_(-3, 3, generator=gen)).to(dtype)
    for s in (1.0, -0.5, 2.0**-7):
        got, want = a.clone(), a.clone()
        _ascent_by(CpuBackend(), got, g, s, backup=False)
        _ascent_by(REFERENCE, want, g, s, backup=False)
        nan = want.isnan()
        assert got[nan].isnan().all()
        same = got.view(torch.int16) == want.view(torch.int16)
        bad = ~same & ~nan
        assert not bad.any(), (
            f"scale {s}: {int(bad.sum())} differ; first at "
            f"{int(bad.nonzero()[0])}: {got[bad][0].item()!r} vs "
            f"{want[bad][0].item()!r}"
        )


@dtypes
@etas
@pytest.mark.parametrize("phase", ELEMENTWISE)
def test_instruction_sets_agree_bit_for_bit(phase, eta, dtype):
    """No fused multiply-add contraction and no reassociation: every instruction set
    computes the same roundings in the same order."""
    if len(ISAS) < 2:
        pytest.skip(f"this CPU runs only {ISAS}")
    case = make_case(dtype, sizes=[1, 7, 4097, 40000])
    results = []
    try:
        for name in ISAS:
            CpuBackend.set_isa(name)
            c = clone_case(case)
            run_phase(CpuBackend(), phase, c, make_sc(), eta=eta)
            results.append(c)
    finally:
        CpuBackend.set_isa("auto")
    for name, other in zip(ISAS[1:], results[1:]):
        for key in case:
            for i, (a, b) in enumerate(zip(results[0][key], other[key])):
                assert torch.equal(a, b), f"{ISAS[0]} vs {name}: {key}[{i}]"


# ------------------------------------------------------------------ threads
@etas
@pytest.mark.parametrize("phase", ["sumsq", "final_sums"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=DTYPE_IDS.get)
def test_reductions_are_bit_identical_on_1_2_3_threads(phase, dtype, eta):
    case = make_case(dtype, sizes=THREAD_SIZES)

    def sums() -> torch.Tensor:
        sc = make_sc()
        run_phase(CpuBackend(), phase, clone_case(case), sc, eta=eta)
        return sc

    results = [_with_threads(n, sums) for n in (1, 2, 3)]
    assert all(torch.equal(results[0], r) for r in results[1:]), results


@etas
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("phase", ELEMENTWISE)
def test_bucket_of_many_work_items_spread_over_threads(phase, dtype, eta):
    """Two threads give the result of one, bit for bit, and the reference's."""
    case = make_case(dtype, sizes=THREAD_SIZES)
    outs = []
    for n in (1, 2):
        c = clone_case(case)
        _with_threads(n, lambda: run_phase(CpuBackend(), phase, c, make_sc(), eta=eta))
        outs.append(c)
    for key in case:
        for i, (a, b) in enumerate(zip(outs[0][key], outs[1][key])):
            assert torch.equal(a, b), f"1 vs 2 threads: {key}[{i}]"
    want = clone_case(case)
    run_phase(REFERENCE, phase, want, make_sc(), eta=eta)
    assert_case_matches(outs[1], want)


# ------------------------------------------------------------------ layouts and packed lists
def _permuted(case: dict, dims: tuple[int, ...], order: tuple[int, ...]) -> dict:
    """Every tensor as a dense, non-contiguous tensor of shape ``dims`` whose memory
    order is the permutation ``order`` of its dimensions (same values, same layout in
    every list)."""
    stored = [dims[d] for d in order]
    inverse = [order.index(d) for d in range(len(dims))]
    return {k: [t.reshape(stored).permute(inverse) for t in v] for k, v in case.items()}


@pytest.mark.parametrize("phase", ["sumsq", "final_sums", *ELEMENTWISE])
@pytest.mark.parametrize(
    "dims,order", [((6, 35), (1, 0)), ((4, 5, 7), (2, 0, 1))], ids=["transposed", "permuted-3d"]
)
def test_dense_permutations_step_in_memory_order(phase, dims, order):
    n = math.prod(dims)
    # float64: the reference's sums are then as exact as ours (float32 sums are not)
    case = _permuted(make_case(torch.float64, sizes=[n, n, n]), dims, order)
    assert not case["params"][0].is_contiguous() and case["params"][0].shape == dims
    got, want = clone_case(case), clone_case(case)
    got_sc, want_sc = make_sc(), make_sc()
    run_phase(CpuBackend(), phase, got, got_sc, eta=0.05)
    run_phase(REFERENCE, phase, want, want_sc, eta=0.05)
    assert_case_matches(got, want)
    assert_tensor_matches(got_sc, want_sc, "sc")


def test_reductions_write_through_any_stride_of_out():
    backend = CpuBackend()
    case = make_case(torch.float64, sizes=[5, 9])
    lists = [backend.pack(case[k]) for k in ("points", "backups", "grads")]
    store = torch.full((7,), -1.0, dtype=torch.float64)
    backend.final_sums(*lists, store[1::2], accumulate=False)
    want = make_sc()
    REFERENCE.final_sums(
        *(REFERENCE.pack(case[k]) for k in ("points", "backups", "grads")),
        want[B.SUMS],
        accumulate=False,
    )
    assert_tensor_matches(store[1::2], want[B.SUMS], "out")
    assert store[0::2].eq(-1.0).all(), "final_sums wrote between its slots"


def test_packed_lists_are_reused_across_calls():
    """Values written in place between calls are read afresh: the packed list keeps the
    tensors and the plan, not their contents."""
    backend = CpuBackend()
    grads = [torch.ones(70_001), torch.ones(3)]
    packed = backend.pack(grads)
    out = torch.zeros(1, dtype=torch.float64)
    backend.sumsq(packed, out, accumulate=False)
    assert out.item() == 70_004
    grads[0].fill_(2.0)
    backend.sumsq(packed, out, accumulate=True)
    assert out.item() == 70_004 + 4 * 70_001 + 3


def test_a_repointed_tensor_is_stepped_at_its_new_address_or_refused():
    """``p.data = ...`` after packing: same dtype, shape and strides are stepped where
    the data now is; anything else raises instead of stepping stale memory."""
    backend = CpuBackend()
    params = [torch.zeros(5), torch.zeros(2, 3)]
    p = backend.pack(params)
    g = backend.pack([torch.ones(5), torch.ones(2, 3)], like=p)
    old = params[0].data
    params[0].data = torch.full((5,), 10.0)
    hyper = sgd_hyper(SGD_CASES["plain"])
    hyper[B.H_RADIUS] = 0.25  # scale 0.25 / (sqrt(1) + 0): every value exact
    backend.backup_ascent(
        p,
        g,
        backend.pack([torch.empty(5), torch.empty(2, 3)], like=p),
        make_sc(sumsq=1.0, eps=0.0),
        hyper,
        backup=False,
    )
    assert torch.equal(params[0], torch.full((5,), 10.25))
    assert torch.equal(params[1], torch.full((2, 3), 0.25))
    assert not old.any(), "the old storage was written"
    out = torch.zeros(1, dtype=torch.float64)
    for replacement in (torch.zeros(3, 2).t(), torch.zeros(6, dtype=torch.float64)):
        params[1].data = replacement
        with pytest.raises(LayoutError, match="changed since it was packed"):
            backend.sumsq(p, out, accumulate=False)


@pytest.mark.parametrize("steps_dtype", [torch.float32, torch.float64], ids=DTYPE_IDS.get)
@etas
def test_adam_takes_each_tensors_own_step_count(steps_dtype, eta):
    sizes = [7, 1, 40000, 3, 0, 33]
    case = make_case(torch.float32, sizes=sizes)
    steps = torch.tensor([1.0, 1.0, 5.0, 2.0, 2.0, 1234.0], dtype=steps_dtype)
    h = ADAM_CASES["adamw"]
    results = []
    for backend in (CpuBackend(), REFERENCE):
        c = clone_case(case)
        p = backend.pack(c["params"])
        backend.adam_update(
            p,
            p,
            *(backend.pack(c[k], like=p) for k in ("backups", "grads", "bufs", "sq")),
            steps,
            make_sc(),
            adam_hyper(h),
            weight_decay=True,
            decoupled=True,
            maximize=False,
            eta=eta,
        )
        results.append(c)
    assert_case_matches(*results)


@pytest.mark.parametrize("switch", ["momentum-of-0", "weight-decay-off"])
def test_sgd_follows_its_switches_not_the_hyper_values(switch):
    """``momentum=True`` with a momentum of 0 still keeps a (dampened) buffer;
    ``weight_decay=False`` ignores a nonzero ``hyper[H_WEIGHT_DECAY]``."""
    h = dict(SGD_CASES["nesterov-dampening"])
    flags = dict(weight_decay=True, momentum=True)
    if switch == "momentum-of-0":
        h["momentum"] = 0.0
    else:
        flags["weight_decay"] = False
    case = make_case(torch.float32, sizes=[3, 4097])
    results = []
    for backend in (CpuBackend(), REFERENCE):
        c = clone_case(case)
        p = backend.pack(c["params"])
        backend.sgd_update(
            p,
            p,
            backend.pack(c["backups"], like=p),
            backend.pack(c["grads"], like=p),
            backend.pack(c["bufs"], like=p),
            make_sc(),
            sgd_hyper(h),
            nesterov=h["nesterov"],
            maximize=False,
            init_bufs=False,
            **flags,
        )
        results.append(c)
    assert_case_matches(*results)


@dtypes
def test_skipped_ascent_leaves_params_bit_exact_even_with_nonfinite_grads(dtype):
    """With FOUND_INF set the ascent writes nothing to the params (not ``p + 0 * g``,
    which is NaN for an infinite g and turns -0 into +0); the backups are still taken."""
    values = torch.tensor([-0.0, 1.5, -3.0, 0.0, 7.0], dtype=dtype)
    grads = torch.tensor([math.inf, math.nan, -math.inf, 1.0, -0.0], dtype=dtype)
    backend = CpuBackend()
    for backup in (True, False):
        params = values.clone()
        backups = torch.zeros_like(values)
        p = backend.pack([params])
        backend.backup_ascent(
            p,
            backend.pack([grads], like=p),
            backend.pack([backups], like=p),
            make_sc(found_inf=True),
            sgd_hyper(SGD_CASES["plain"]),
            backup=backup,
            eta=0.05,
        )
        assert torch.equal(params.view(torch.uint8), values.view(torch.uint8))
        want = values if backup else torch.zeros_like(values)
        assert torch.equal(backups.view(torch.uint8), want.view(torch.uint8))


# ------------------------------------------------------------------ errors
PACK_ERRORS = {
    "meta-device": ([torch.zeros(3, device="meta")], None, "is on meta"),
    "int-dtype": (
        [torch.zeros(3, dtype=torch.int32)],
        None,
        "float32, float64, bfloat16 and float16",
    ),
    "two-dtypes": (
        [torch.zeros(3), torch.zeros(3, dtype=torch.float64)],
        None,
        "tensor 1 is float64, tensor 0 float32",
    ),
    "overlapping": ([torch.zeros(4).expand(3, 4)], None, "not dense and non-overlapping"),
    "strided-slice": ([torch.zeros(4, 4)[:, :2]], None, "not dense and non-overlapping"),
    "like-length": ([torch.zeros(3)], [torch.zeros(3), torch.zeros(2)], "1 tensors, 2 expected"),
    "like-strides": (
        [torch.zeros(3, 2).t()],
        [torch.zeros(2, 3)],
        r"strides \[1, 2\]; expected float32 shape \[2, 3\] strides \[3, 1\]",
    ),
    "like-dtype": (
        [torch.zeros(3, dtype=torch.float64)],
        [torch.zeros(3)],
        "tensor 0 is float64 shape",
    ),
}


@pytest.mark.parametrize("name", list(PACK_ERRORS))
def test_packing_errors_are_layout_errors_that_say_why(name):
    tensors, like, message = PACK_ERRORS[name]
    backend = CpuBackend()
    with pytest.raises(LayoutError, match=message):
        backend.pack(tensors, like=None if like is None else backend.pack(like))


def test_lists_packed_apart_must_line_up_at_the_call():
    """Lists packed without ``like`` are compared tensor by tensor at the call: equal
    layouts step as if packed alike, others raise, naming the argument."""
    backend = CpuBackend()
    case = make_case(torch.float32, sizes=[5, 9])
    sc = make_sc()
    backend.final_sums(
        *(backend.pack(case[k]) for k in ("points", "backups", "grads")),
        sc[B.SUMS],
        accumulate=False,
    )
    want = make_sc()
    run_phase(backend, "final_sums", clone_case(case), want)
    assert torch.equal(sc, want)
    points, backups = backend.pack(case["points"]), backend.pack(case["backups"])
    for grads, message in (
        ([torch.zeros(5), torch.zeros(3, 3)], "grads: tensor 1 is float32"),
        ([torch.zeros(5)], "grads has 1 tensors, the first list 2"),
    ):
        with pytest.raises(LayoutError, match=f"final_sums: {message}"):
            backend.final_sums(points, backups, backend.pack(grads), sc[B.SUMS], accumulate=False)


def test_bad_call_arguments_raise_clear_errors():
    backend = CpuBackend()
    p = backend.pack([torch.zeros(3)])
    sc, hyper = make_sc(), adam_hyper(ADAM_CASES["adamw"])
    with pytest.raises(ValueError, match="weights"):
        backend.sumsq(p, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False, eta=0.1)
    with pytest.raises(ValueError, match="out must be a 1-d float64 CPU tensor of 3"):
        backend.final_sums(p, p, p, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
    with pytest.raises(ValueError, match="sc must be a contiguous 1-d float64"):
        backend.backup_ascent(p, p, p, sc.float(), hyper, backup=True)
    with pytest.raises(ValueError, match="hyper must be"):
        backend.backup_ascent(p, p, p, sc, hyper[:3], backup=True)
    with pytest.raises(ValueError, match="sc must be"):
        backend.update_scalars(sc[:-1], check=True)
    with pytest.raises(ValueError, match="coeffs must be a 1-d CPU tensor of 2"):
        backend.write_point(p, p, p, p, sc[B.SUMS], eta=None)
    with pytest.raises(ValueError, match="momentum=True needs the momentum bufs"):
        backend.sgd_update(
            p,
            p,
            p,
            p,
            None,
            sc,
            hyper,
            weight_decay=False,
            momentum=True,
            nesterov=False,
            maximize=False,
            init_bufs=False,
        )
    with pytest.raises(ValueError, match="one step count per tensor"):
        backend.adam_update(
            p,
            p,
            p,
            p,
            p,
            p,
            torch.ones(2),
            sc,
            hyper,
            weight_decay=False,
            decoupled=True,
            maximize=False,
        )
    with pytest.raises(ValueError, match="unknown instruction set"):
        CpuBackend.set_isa("sse9")
