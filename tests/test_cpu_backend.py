"""The fused C++ CPU backend (``backend="cpu"``) against the reference backend.

Every phase, plain and in ASAM's geometry (``eta``), on every dtype and on every
instruction set this CPU runs (the extension picks the best at run time; the
others are forced here so the fallbacks are tested too); the exact 16-bit
conversions; determinism across thread counts; then the whole optimizer against
``backend="reference"``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xsam_fast
from backend_contract import (ADAM_CASES, DTYPES, SGD_CASES, acc, assert_matches,
                              assert_tensor_matches, clone_case, make_case)
from xsam_fast.backends.reference import ReferenceBackend

if "cpu" not in xsam_fast.available_backends():
    pytest.skip(f"cpu backend unavailable: {xsam_fast.backend_status()['cpu']}",
                allow_module_level=True)

from xsam_fast.backends.cpu import CpuBackend  # noqa: E402

REFERENCE = ReferenceBackend()
IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16",
       torch.float16: "fp16"}
ISAS = CpuBackend.supported_isas()
ETAS = {"plain": None, "asam": 0.05}
PHASES = ["sumsq", "final_sums", "backup_ascent", "ascent", "write_point",
          "write_grad_restore"]
#: phases with tensor outputs only (elementwise: no summation order involved)
ELEMENTWISE = ["backup_ascent", "ascent", "write_point", "write_grad_restore", "sgd_update",
               "adam_update"]

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
etas = pytest.mark.parametrize("eta", list(ETAS.values()), ids=list(ETAS))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one thread unless it sets its own count: these tensors are
    small, and on a shared, loaded 2-core machine each parallel region (ours and
    torch's) can wait milliseconds for a descheduled thread. The multi-threaded
    paths are checked bit for bit against one thread in the determinism tests."""
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


def test_default_instruction_set_is_the_best_this_cpu_runs():
    assert CpuBackend.isa() == ISAS[0]


def run(backend, phase: str, case: dict, dtype: torch.dtype, eta: float | None = None,
        **hyper):
    """Runs ``phase`` on ``case`` (mutated in place) with the contract's arguments."""
    c = case
    coeffs = torch.tensor([0.37, -1.3], dtype=acc(dtype))
    if phase == "sumsq":
        return backend.sumsq(c["grads"], weights=c["backups"], eta=eta)
    if phase == "final_sums":
        return backend.final_sums(c["points"], c["backups"], c["grads"], eta=eta)
    if phase in ("backup_ascent", "ascent"):
        scale = torch.tensor(0.013, dtype=acc(dtype))
        return backend.backup_ascent(c["params"], c["grads"], c["backups"], scale,
                                     phase == "backup_ascent", eta=eta)
    if phase == "write_point":
        return backend.write_point(c["params"], c["points"], c["backups"], c["grads"], coeffs,
                                   eta=eta)
    if phase == "write_grad_restore":
        return backend.write_grad_restore(c["params"], c["params"], c["backups"], c["grads"],
                                          coeffs, eta=eta)
    if phase == "sgd_update":
        hyper = {**SGD_CASES["nesterov-dampening"], **hyper}
        bufs = c["bufs"] if hyper["momentum"] != 0 else []
        return backend.sgd_update(c["params"], c["params"], c["backups"], c["grads"], bufs,
                                  coeffs, eta=eta, **hyper)
    if phase == "adam_update":
        hyper = {**ADAM_CASES["adamw"], **hyper}
        return backend.adam_update(c["params"], c["params"], c["backups"], c["grads"],
                                   c["bufs"], c["sq"], coeffs, eta=eta, **hyper)
    raise ValueError(phase)


def check(phase: str, dtype: torch.dtype, eta: float | None = None, sizes=None, **hyper):
    """``phase`` of the cpu backend equals the reference's on a fresh case."""
    case = make_case(dtype) if sizes is None else make_case(dtype, sizes)
    got_case, want_case = clone_case(case), clone_case(case)
    got = run(CpuBackend(), phase, got_case, dtype, eta, **hyper)
    want = run(REFERENCE, phase, want_case, dtype, eta, **hyper)
    assert_matches(got_case, want_case, got, want)


# ------------------------------------------------------------------ phases vs reference
# With the default (best) instruction set; the others must give the same elementwise
# results bit for bit (test_instruction_sets_agree_bit_for_bit) and their own
# reductions (which sum in another order) are checked here too.
@dtypes
@etas
@pytest.mark.parametrize("phase", PHASES)
def test_phase_matches_reference(phase, eta, dtype):
    check(phase, dtype, eta)


@dtypes
@etas
@pytest.mark.parametrize("phase", ["sumsq", "final_sums"])
def test_reductions_of_every_instruction_set_match_reference(phase, eta, dtype, isa):
    check(phase, dtype, eta)


@dtypes
@etas
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_update_matches_reference(case, eta, dtype):
    check("sgd_update", dtype, eta, **SGD_CASES[case])


@dtypes
@etas
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_update_matches_reference(case, eta, dtype):
    check("adam_update", dtype, eta, **ADAM_CASES[case])


@pytest.mark.parametrize("phase", PHASES + ["sgd_update", "adam_update"])
def test_multidimensional_shapes(phase):
    """Tensors of any shape are handled as their flat contiguous elements."""
    shapes = [(64, 3, 3, 3), (5,), (7, 1, 13), (2, 0, 4), (33, 31)]
    case = make_case(torch.float32, sizes=[int(torch.Size(s).numel()) for s in shapes])
    case = {k: [t.reshape(s) for t, s in zip(v, shapes)] for k, v in case.items()}
    got_case, want_case = clone_case(case), clone_case(case)
    got = run(CpuBackend(), phase, got_case, torch.float32)
    want = run(REFERENCE, phase, want_case, torch.float32)
    for key in got_case:
        for g, w in zip(got_case[key], want_case[key]):
            assert g.shape == w.shape
    flat = {k: [t.reshape(-1) for t in v] for k, v in got_case.items()}
    assert_matches(flat, {k: [t.reshape(-1) for t in v] for k, v in want_case.items()},
                   got, want)


@etas
@pytest.mark.parametrize("phase", PHASES + ["sgd_update", "adam_update"])
def test_empty_lists(phase, eta):
    out = run(CpuBackend(), phase, make_case(torch.float32, sizes=[]), torch.float32, eta)
    if phase == "sumsq":
        assert out.dtype == torch.float32 and out.shape == () and out.item() == 0.0
    elif phase == "final_sums":
        assert out.dtype == torch.float32 and out.tolist() == [0.0, 0.0, 0.0]
    else:
        assert out is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=IDS.get)
def test_reduction_dtypes_follow_accumulation_dtype(dtype):
    case = make_case(dtype, sizes=[5, 9])
    backend = CpuBackend()
    assert backend.sumsq(case["grads"]).dtype == acc(dtype)
    assert backend.sumsq(case["grads"]).shape == ()
    assert backend.final_sums(case["points"], case["backups"], case["grads"]).dtype == acc(dtype)


# ------------------------------------------------------------------ exact 16-bit arithmetic
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=IDS.get)
def test_every_16bit_value_widens_and_narrows_exactly(dtype, isa):
    """All 65,536 bit patterns: the backup is a bit-exact copy through float32, and
    ``p + 1 * 0`` is the value itself (signed zeros become +0, as in float32)."""
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    params, backups = values.clone(), torch.empty_like(values)
    CpuBackend().backup_ascent([params], [torch.zeros_like(values)], [backups],
                               torch.tensor(1.0), True)
    nan = values.isnan()
    assert backups[nan].isnan().all() and params[nan].isnan().all()
    assert torch.equal(backups.view(torch.int16)[~nan], bits[~nan])
    assert torch.equal(params[~nan].float(), values[~nan].float() + 0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=IDS.get)
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
        scale = torch.tensor(s)
        CpuBackend().backup_ascent([got], [g], [torch.empty_like(a)], scale, False)
        REFERENCE.backup_ascent([want], [g], [torch.empty_like(a)], scale, False)
        nan = want.isnan()
        assert got[nan].isnan().all()
        same = got.view(torch.int16) == want.view(torch.int16)
        assert same[~nan].all(), (f"scale {s}: {int((~same & ~nan).sum())} differ, e.g. "
                                  f"{got[~same & ~nan][:4].tolist()} vs "
                                  f"{want[~same & ~nan][:4].tolist()}")


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
            run(CpuBackend(), phase, c, dtype, eta)
            results.append(c)
    finally:
        CpuBackend.set_isa("auto")
    for name, other in zip(ISAS[1:], results[1:]):
        for key in case:
            for a, b in zip(results[0][key], other[key]):
                assert torch.equal(a, b), f"{ISAS[0]} vs {name}: {key}"


# ------------------------------------------------------------------ determinism, errors
def _with_threads(n: int, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


#: big enough for many work items (32K elements each), with small tensors between
THREAD_SIZES = [1_000_003, 17, 0, 250_000, 3, 70_001]


@etas
@pytest.mark.parametrize("phase", ["sumsq", "final_sums"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=IDS.get)
def test_reductions_do_not_depend_on_thread_count(phase, dtype, eta):
    case = make_case(dtype, sizes=THREAD_SIZES)
    results = [_with_threads(n, lambda: run(CpuBackend(), phase, clone_case(case), dtype, eta))
               for n in (1, 2, 3)]
    assert all(torch.equal(results[0], r) for r in results[1:]), results


@etas
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=IDS.get)
@pytest.mark.parametrize("phase", ELEMENTWISE)
def test_updates_do_not_depend_on_thread_count(phase, dtype, eta):
    case = make_case(dtype, sizes=THREAD_SIZES)
    outs = []
    for n in (1, 2):
        c = clone_case(case)
        _with_threads(n, lambda: run(CpuBackend(), phase, c, dtype, eta))
        outs.append(c)
    for key in case:
        assert all(torch.equal(a, b) for a, b in zip(outs[0][key], outs[1][key])), key


def test_two_threads_match_reference():
    """The multi-threaded launch itself, against the reference (not only vs one thread)."""
    case = make_case(torch.float32, sizes=THREAD_SIZES)
    got_case, want_case = clone_case(case), clone_case(case)
    got = _with_threads(2, lambda: run(CpuBackend(), "final_sums", got_case, torch.float32))
    want = run(REFERENCE, "final_sums", want_case, torch.float32)
    assert_matches(got_case, want_case, got, want)
    _with_threads(2, lambda: run(CpuBackend(), "sgd_update", got_case, torch.float32))
    run(REFERENCE, "sgd_update", want_case, torch.float32)
    assert_matches(got_case, want_case, None, None)


def test_bad_arguments_raise_clear_errors():
    backend = CpuBackend()
    a, b = [torch.zeros(3)], [torch.zeros(4)]
    with pytest.raises(RuntimeError, match="differs in size"):
        backend.final_sums(a, b, a)
    with pytest.raises(RuntimeError, match="differ in length"):
        backend.final_sums(a, a + a, a)
    with pytest.raises(RuntimeError, match="share a dtype"):
        backend.final_sums(a, [torch.zeros(3, dtype=torch.float64)], a)
    with pytest.raises(RuntimeError, match="contiguous"):
        backend.sumsq([torch.zeros(4, 4).t()])
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        backend.sumsq([torch.zeros(3, dtype=torch.int32)])
    with pytest.raises(ValueError, match="weights"):
        backend.sumsq(a, eta=0.1)
    with pytest.raises(ValueError, match="unknown instruction set"):
        CpuBackend.set_isa("sse9")


def test_backend_reports_itself():
    backend = CpuBackend()
    assert CpuBackend.is_available() == (True, "")
    assert backend.supports(torch.device("cpu"), torch.bfloat16)
    assert not backend.supports(torch.device("cpu"), torch.int64)
    assert not backend.supports(torch.device("meta"), torch.float32)
    assert ISAS[-1] == "generic"


# ------------------------------------------------------------------ whole optimizer
def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    # no conv bias before BN: its gradient is rounding noise, which Adam would amplify
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).to(dtype)


def _train(backend: str, dtype: torch.dtype, base, steps: int, search: bool, n_steps: int = 5,
           **kw):
    model = _model(dtype)
    opt = xsam_fast.XSAM(model.parameters(), base, steps=steps, backend=backend, model=model,
                         alpha_delta=0.25, **kw)  # a 9-point grid keeps the search cheap
    gen = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        x = torch.randn(16, 1, 8, 8, generator=gen).to(dtype)
        y = torch.randint(0, 5, (16,), generator=gen)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            return loss

        opt.step(closure, search_loss=lambda: nn.functional.cross_entropy(model(x).float(), y),
                 update_alpha=search)
    return [p.detach() for p in model.parameters()], opt


OPTIMIZERS = {
    "sgd-momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd-nesterov-wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=5e-4)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "rmsprop-unfused": (torch.optim.RMSprop, dict(lr=1e-3)),
    "sgd-asam": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, adaptive=True, eta=0.01,
                                       rho=0.5)),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=IDS.get)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("steps,search", [(1, False), (2, True)], ids=["k1", "k2-search"])
def test_optimizer_matches_reference(opt_name, steps, search, dtype):
    base, kw = OPTIMIZERS[opt_name]
    got, opt = _train("cpu", dtype, base, steps, search, **kw)
    want, ref = _train("reference", dtype, base, steps, search, **kw)
    assert opt.alpha == ref.alpha
    assert opt.step_count == ref.step_count == 5
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=IDS.get)
def test_16bit_optimizer_stays_within_a_few_ulp_of_reference(dtype):
    kw = dict(lr=0.05, momentum=0.9)
    got, _ = _train("cpu", dtype, torch.optim.SGD, 1, False, **kw)
    want, _ = _train("reference", dtype, torch.optim.SGD, 1, False, **kw)
    for g, w in zip(got, want):
        # 5 steps of 1-ulp rounding differences may compound, but only by a few units
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(g.float(), w.float(), rtol=4 * eps, atol=1e-3)


def test_mixed_dtypes_and_noncontiguous_params():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(7, 5))
    b = nn.Parameter(torch.randn(33).to(torch.bfloat16))
    c = nn.Parameter(torch.randn(5, 6).t())  # not contiguous: handled by the reference path
    results = []
    for backend in ("cpu", "reference"):
        params = [nn.Parameter(t.detach().clone()) for t in (a, b, c)]
        params[2] = nn.Parameter(c.detach().clone().t().contiguous().t())
        opt = xsam_fast.XSAM(params, torch.optim.SGD, lr=0.1, momentum=0.9, backend=backend)

        def closure():
            opt.zero_grad()
            loss = (params[0].sum() ** 2 + (params[1].float() ** 3).sum()
                    + (params[2] @ params[0].T).sin().sum())
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        results.append([p.detach() for p in params])
    got, want = results
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    assert got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[1].float(), want[1].float(), rtol=4 * 2**-8, atol=1e-2)


def test_state_holds_theta0_only_and_no_parameter_sized_scratch():
    model = _model(torch.float32)
    opt = xsam_fast.XSAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9,
                         backend="cpu")
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    params = list(model.parameters())
    assert set(opt.state) == set(params)
    for p in params:
        assert list(opt.state[p]) == ["theta0"] and opt.state[p]["theta0"].shape == p.shape
        assert list(opt.base_optimizer.state[p]) == ["momentum_buffer"]
    extra = sum(opt.state[p]["theta0"].nbytes for p in params)
    assert extra == sum(p.nbytes for p in params)
