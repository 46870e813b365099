"""The Triton backend on CPU tensors under Triton's interpreter, against the reference.

How the interpreter is switched on without touching the rest of the suite:
Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when the
kernel modules are imported. The module-scoped fixture ``tb`` sets the variable
(``pytest.MonkeyPatch``), reloads ``xsam_fast.triton_kernels.*`` and
``xsam_fast.backends.triton`` so that the kernels are built for the
interpreter, and clears the backend registry's caches; on teardown it restores
the environment, reloads the modules again and clears the caches again, so
that tests that run later see the backend as it is on this machine (on a
CPU-only machine: unavailable, and ``auto`` never picks it for CPU tensors).

Sizes are small and odd (1, 3, 1023, a 0-size tensor, sizes that are not
multiples of the block), and most tests use ``block=256`` so that tensors span
several programs, with full and masked chunks.
"""
from __future__ import annotations

import importlib
import math
import os

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

import xsam_fast.backends as registry  # noqa: E402
from xsam_fast import XSAM  # noqa: E402
from xsam_fast.backends.reference import ReferenceBackend  # noqa: E402

KERNEL_MODULES = ["config", "common", "tables", "reductions", "perturb", "update"]
SIZES = [1, 3, 1023, 0, 700, 257, 256]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
BLOCK = 256
REF = ReferenceBackend()


def _reload(interpret: bool):
    mp = pytest.MonkeyPatch()
    if interpret:
        mp.setenv("TRITON_INTERPRET", "1")
    else:
        mp.delenv("TRITON_INTERPRET", raising=False)
    try:
        for name in KERNEL_MODULES:
            importlib.reload(importlib.import_module(f"xsam_fast.triton_kernels.{name}"))
        module = importlib.reload(importlib.import_module("xsam_fast.backends.triton"))
    finally:
        registry._load.cache_clear()
        registry._instance.cache_clear()
    return mp, module


@pytest.fixture(scope="module")
def tm():
    """``xsam_fast.backends.triton`` with its kernels built for the interpreter."""
    previous = os.environ.get("TRITON_INTERPRET")
    mp, module = _reload(interpret=True)
    assert module.TritonBackend.is_available() == (True, "")
    yield module
    mp.undo()
    assert os.environ.get("TRITON_INTERPRET") == previous
    _reload(interpret=previous == "1")[0].undo()
    # later tests see the backend as this machine has it
    expected = previous == "1" or torch.cuda.is_available()
    assert ("triton" in registry.available_backends()) == expected


@pytest.fixture
def tb(tm):
    return tm.TritonBackend(block=BLOCK)


# ------------------------------------------------------------------ helpers
def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tensors(sizes, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype) for n in sizes]


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """16-bit floats as integers in the order of their values (adjacent floats differ by 1)."""
    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def assert_match(ours, ref, what=""):
    """fp32/fp64: rtol 1e-6 (fp64: 1e-12); fp16/bf16: at most 1 ulp of the stored value."""
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.numel() == 0:
            continue
        if a.dtype in (torch.float16, torch.bfloat16):
            ulps = (_ordered(a) - _ordered(b)).abs()
            bad = (ulps > 1).nonzero().flatten()
            assert bad.numel() == 0, (
                f"{what}[{k}] {a.dtype}: {bad.numel()} elements differ by > 1 ulp, first at "
                f"{bad[:5].tolist()}: {a[bad[:5]].tolist()} vs {b[bad[:5]].tolist()}")
        else:
            rtol = 1e-12 if a.dtype == torch.float64 else 1e-6
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2,
                                       msg=lambda m: f"{what}[{k}]: {m}")


def _truth_sums(points, backups, grads):
    """float64 ground truth of the final sums, and the sums of |terms| (error scale)."""
    out, mag = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for x, b, g in zip(points, backups, grads):
        d, g = x.double() - b.double(), g.double()
        terms = [g * g, d * d, d * g]
        out += torch.stack([t.sum() for t in terms])
        mag += torch.stack([t.abs().sum() for t in terms])
    return out, mag


def _setup(dtype, sizes=SIZES, seed=0):
    backups = _tensors(sizes, dtype, seed)
    grads = _tensors(sizes, dtype, seed + 1)
    points = [(b.double() + 0.1 * d.double()).to(dtype)
              for b, d in zip(backups, _tensors(sizes, dtype, seed + 2))]
    coeffs = torch.tensor([0.8, -0.35], dtype=_acc(dtype))
    return points, backups, grads, coeffs


def _clone(ts):
    return [t.clone() for t in ts]


# ------------------------------------------------------------- availability
def test_available_and_supports_under_interpreter(tm, tb):
    assert tm.TritonBackend.name == "triton"
    for dtype in DTYPES:
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


def test_block_must_be_power_of_two(tm):
    with pytest.raises(ValueError, match="power of two"):
        tm.TritonBackend(block=1000)


# --------------------------------------------------------------- reductions
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sumsq(tb, dtype):
    xs = _tensors(SIZES, dtype, 3)
    ours = tb.sumsq(xs)
    assert ours.shape == () and ours.dtype == _acc(dtype)
    truth = sum(float((x.double() ** 2).sum()) for x in xs)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    assert abs(float(ours) - truth) <= rtol * truth
    assert abs(float(ours) - float(REF.sumsq(xs))) <= 2 * rtol * truth


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_final_sums(tb, dtype):
    points, backups, grads, _ = _setup(dtype)
    ours = tb.final_sums(points, backups, grads)
    assert ours.shape == (3,) and ours.dtype == _acc(dtype)
    truth, mag = _truth_sums(points, backups, grads)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    err = (ours.double() - truth).abs()
    assert (err <= rtol * mag).all(), (ours, truth)
    # the reference's own error is of the same order
    ref_err = (REF.final_sums(points, backups, grads).double() - truth).abs()
    assert (err <= 4 * ref_err + rtol * mag * 0.25).all(), (err, ref_err)


def test_reductions_are_deterministic(tm):
    xs = _tensors([5000, 3, 70000, 1, 0, 9999], torch.float32, 7, scale=3.0)
    ys = _tensors([5000, 3, 70000, 1, 0, 9999], torch.float32, 8)
    zs = _tensors([5000, 3, 70000, 1, 0, 9999], torch.float32, 9)
    a, b = tm.TritonBackend(block=BLOCK), tm.TritonBackend(block=BLOCK)
    first = [a.sumsq(xs), a.final_sums(xs, ys, zs)]
    again = [a.sumsq(xs), a.final_sums(xs, ys, zs)]   # cached tables
    fresh = [b.sumsq(xs), b.final_sums(xs, ys, zs)]   # tables rebuilt
    copies = [b.sumsq(_clone(xs)), b.final_sums(_clone(xs), _clone(ys), _clone(zs))]
    for other in (again, fresh, copies):
        for u, v in zip(first, other):
            assert torch.equal(u, v)


def test_empty_lists_and_zero_size_tensors(tb):
    assert torch.equal(tb.sumsq([]), REF.sumsq([]))
    assert torch.equal(tb.final_sums([], [], []), REF.final_sums([], [], []))
    empty = [torch.empty(0)]
    assert float(tb.sumsq(empty)) == 0.0
    assert torch.equal(tb.final_sums(empty, empty, empty), torch.zeros(3))
    co = torch.tensor([1.0, 1.0])
    for ts in ([], empty):  # nothing to do, nothing fails
        tb.backup_ascent(ts, ts, ts, torch.tensor(1.0), True)
        tb.write_point(ts, ts, ts, ts, co)
        tb.write_grad_restore(ts, ts, ts, ts, co)
        tb.sgd_update(ts, ts, ts, ts, ts, co, lr=0.1, weight_decay=0.0, momentum=0.9,
                      dampening=0.0, nesterov=False, maximize=False, init_bufs=True)
        tb.adam_update(ts, ts, ts, ts, ts, ts, co, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                       weight_decay=0.0, decoupled=True, maximize=False, step_size=1.0,
                       bias_correction2_sqrt=1.0)


# -------------------------------------------------------------- elementwise
@pytest.mark.parametrize("backup", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backup_ascent(tb, dtype, backup):
    params, grads = _tensors(SIZES, dtype, 0), _tensors(SIZES, dtype, 1)
    scale = torch.tensor(0.037, dtype=_acc(dtype))
    p1, p2 = _clone(params), _clone(params)
    b1, b2 = [torch.full_like(p, 7.0) for p in params], [torch.full_like(p, 7.0) for p in params]
    tb.backup_ascent(p1, grads, b1, scale, backup)
    REF.backup_ascent(p2, grads, b2, scale, backup)
    assert_match(p1, p2, "params")
    for x, y in zip(b1, b2):  # the backup is an exact copy (or untouched)
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_write_point(tb, dtype):
    points, backups, grads, coeffs = _setup(dtype)
    o1 = [torch.empty_like(p) for p in points]
    o2 = [torch.empty_like(p) for p in points]
    tb.write_point(o1, points, backups, grads, coeffs)
    REF.write_point(o2, points, backups, grads, coeffs)
    assert_match(o1, o2, "out")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_write_grad_restore(tb, dtype):
    points, backups, grads, coeffs = _setup(dtype)
    p1, g1 = _clone(points), _clone(grads)
    p2, g2 = _clone(points), _clone(grads)
    tb.write_grad_restore(p1, p1, backups, g1, coeffs)  # points alias params, as in a step
    REF.write_grad_restore(p2, p2, backups, g2, coeffs)
    assert_match(g1, g2, "grads")
    for x, b in zip(p1, backups):
        assert torch.equal(x, b)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # 3.3e38 + 3.3e38 -> inf, on purpose
def test_bf16_stores_round_to_nearest_even(tb):
    # b + g is exact in fp32 and exactly half-way between two bf16 values: ties go to even
    one, half_ulp = 1.0, 2.0 ** -8
    b = torch.tensor([one, one + 2 * half_ulp, -one, 3.0, 1e-39, 3.3e38, 0.0],
                     dtype=torch.bfloat16)
    g = torch.tensor([half_ulp, half_ulp, -half_ulp, 2.0 ** -7 + 2.0 ** -15, 1e-41, 3.3e38,
                      float("nan")], dtype=torch.float32)
    g16 = g.to(torch.bfloat16)  # every value above is exact in bf16 (1e-41: subnormal)
    assert torch.equal(g16.float()[:-1], g[:-1].float().to(torch.bfloat16).float())
    coeffs = torch.tensor([0.0, 1.0])
    out = [torch.empty_like(b)]
    tb.write_point(out, [b], [b], [g16], coeffs)
    expected = (b.float() + g16.float()).to(torch.bfloat16)  # torch rounds to nearest even
    assert torch.equal(out[0][:-1].view(torch.int16), expected[:-1].view(torch.int16))
    assert out[0][-1].isnan()
    # the tie cases really are ties, and they went to the even neighbour
    assert float(out[0][0]) == 1.0 and float(out[0][1]) == 1.0 + 2.0 ** -6


SGD_CASES = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False),
    "momentum-init": dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=5e-4,
                          maximize=False, init_bufs=True),
    "momentum-damp": dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=5e-4,
                          maximize=False),
    "nesterov-max": dict(momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-2,
                         maximize=True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_update(tb, dtype, case):
    hyper = {"init_bufs": False, **SGD_CASES[case]}
    points, backups, grads, coeffs = _setup(dtype)
    bufs = _tensors(SIZES, dtype, 11) if hyper["momentum"] else []
    p1, p2, k1, k2 = _clone(points), _clone(points), _clone(bufs), _clone(bufs)
    tb.sgd_update(p1, p1, backups, grads, k1, coeffs, lr=0.05, **hyper)
    REF.sgd_update(p2, p2, backups, grads, k2, coeffs, lr=0.05, **hyper)
    assert_match(p1, p2, "params")
    assert_match(k1, k2, "bufs")


ADAM_CASES = {
    "adamw": dict(weight_decay=1e-2, decoupled=True, maximize=False, beta1=0.9),
    "adam-l2-max": dict(weight_decay=1e-2, decoupled=False, maximize=True, beta1=0.9),
    "adam-beta1-small": dict(weight_decay=0.0, decoupled=False, maximize=False, beta1=0.3),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_update(tb, dtype, case):
    hyper = ADAM_CASES[case]
    points, backups, grads, coeffs = _setup(dtype)
    ms = _tensors(SIZES, dtype, 12, scale=0.1)
    vs = [v.abs() for v in _tensors(SIZES, dtype, 13, scale=0.1)]
    step, lr, beta2 = 3, 1e-3, 0.999
    kw = dict(lr=lr, beta2=beta2, eps=1e-8, step_size=lr / (1 - hyper["beta1"] ** step),
              bias_correction2_sqrt=math.sqrt(1 - beta2 ** step), **hyper)
    p1, p2, m1, m2, v1, v2 = (_clone(t) for t in (points, points, ms, ms, vs, vs))
    tb.adam_update(p1, p1, backups, grads, m1, v1, coeffs, **kw)
    REF.adam_update(p2, p2, backups, grads, m2, v2, coeffs, **kw)
    assert_match(m1, m2, "exp_avg")
    assert_match(v1, v2, "exp_avg_sq")
    assert_match(p1, p2, "params")


def test_int64_offsets(tm, monkeypatch):
    """The int64-offset path (tensors > 2**31 - 1 - block elements), forced on small tensors."""
    monkeypatch.setattr(importlib.import_module("xsam_fast.triton_kernels.tables"),
                        "INT32_LIMIT", 300)
    tb = tm.TritonBackend(block=BLOCK)
    points, backups, grads, coeffs = _setup(torch.float32)
    assert tb.tables.layout(points).large
    truth, mag = _truth_sums(points, backups, grads)
    assert ((tb.final_sums(points, backups, grads).double() - truth).abs() <= 1e-6 * mag).all()
    p1, p2 = _clone(points), _clone(points)
    tb.sgd_update(p1, p1, backups, grads, [], coeffs, lr=0.1, weight_decay=0.0, momentum=0.0,
                  dampening=0.0, nesterov=False, maximize=False, init_bufs=False)
    REF.sgd_update(p2, p2, backups, grads, [], coeffs, lr=0.1, weight_decay=0.0, momentum=0.0,
                   dampening=0.0, nesterov=False, maximize=False, init_bufs=False)
    assert_match(p1, p2, "params")


# ------------------------------------------------------- launches and tables
def _count_launches(tm, monkeypatch):
    """Wrap ``run`` of every Triton function of the kernel modules; returns the counter."""
    counter = {"n": 0}
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"xsam_fast.triton_kernels.{name}")
        for attr in vars(module).values():
            run = getattr(attr, "run", None)
            if run is None or not hasattr(attr, "__getitem__") or not hasattr(attr, "fn"):
                continue

            def counted(*args, _run=run, **kwargs):
                counter["n"] += 1
                return _run(*args, **kwargs)

            monkeypatch.setattr(attr, "run", counted)
    return counter


def _launches_per_phase(tb, counter, n_tensors):
    sizes = [(17 * i) % 600 + 1 for i in range(n_tensors)]
    points, backups, grads, coeffs = _setup(torch.float32, sizes)
    bufs, ms, vs = _tensors(sizes, torch.float32, 5), _tensors(sizes, torch.float32, 6), \
        [v.abs() for v in _tensors(sizes, torch.float32, 7)]
    phases = {
        "sumsq": lambda: tb.sumsq(grads),
        "backup_ascent": lambda: tb.backup_ascent(points, grads, backups, coeffs[0], True),
        "final_sums": lambda: tb.final_sums(points, backups, grads),
        "write_point": lambda: tb.write_point(points, points, backups, grads, coeffs),
        "write_grad_restore": lambda: tb.write_grad_restore(points, points, backups, grads,
                                                            coeffs),
        "sgd_update": lambda: tb.sgd_update(points, points, backups, grads, bufs, coeffs, lr=0.1,
                                            weight_decay=1e-4, momentum=0.9, dampening=0.0,
                                            nesterov=True, maximize=False, init_bufs=False),
        "adam_update": lambda: tb.adam_update(points, points, backups, grads, ms, vs, coeffs,
                                              lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                                              weight_decay=0.01, decoupled=True, maximize=False,
                                              step_size=1e-3, bias_correction2_sqrt=1.0),
    }
    counts = {}
    for name, phase in phases.items():
        before = counter["n"]
        phase()
        counts[name] = counter["n"] - before
    return counts


def test_launch_count_does_not_grow_with_tensors(tm, monkeypatch):
    counter = _count_launches(tm, monkeypatch)
    tb = tm.TritonBackend(block=BLOCK)
    few, many = _launches_per_phase(tb, counter, 3), _launches_per_phase(tb, counter, 30)
    expected = {"sumsq": 2, "final_sums": 2}  # partials, then the fixed-order sum
    for phase in few:
        assert few[phase] == many[phase] == expected.get(phase, 1), (phase, few, many)


def test_tables_are_cached(tm):
    tb = tm.TritonBackend(block=BLOCK)
    points, backups, grads, coeffs = _setup(torch.float32)
    tb.final_sums(points, backups, grads)
    built = tb.tables.builds
    tb.final_sums(points, backups, grads)
    tb.sumsq(grads)
    assert tb.tables.builds == built  # nothing moved, nothing rebuilt
    new_grads = _clone(grads)  # reallocated gradients: only their pointer table is new
    tb.final_sums(points, backups, new_grads)
    assert tb.tables.builds == built + 1


# ---------------------------------------------------------- ASAM geometry (eta)
ASAM_PHASES = ["sumsq", "final_sums", "backup_ascent", "ascent", "write_point",
               "write_grad_restore", "sgd_update", "adam_update"]


def _asam_sums_close(got, want, mag, dtype, what):
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == want.dtype and got.shape == want.shape, what
    err = (got.double() - want.double()).abs()
    assert bool((err <= rel * mag + 1e-30).all()), f"{what}: got {got.tolist()}, want {want.tolist()}"


@pytest.mark.parametrize("phase", ASAM_PHASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_asam_phase_matches_reference(tb, dtype, phase):
    """Every phase with ``eta`` (T = |theta_0| + eta) against the reference backend."""
    eta = 0.05
    points, backups, grads, coeffs = _setup(dtype, seed=20)
    # weights near 0 too, where T ~ eta (|theta_0| is not just of order 1)
    backups = [(b.double() * torch.linspace(0, 1, b.numel(), dtype=torch.float64) ** 4).to(dtype)
               for b in backups]
    points = [(b.double() + 0.05 * g.double()).to(dtype) for b, g in zip(backups, grads)]
    if phase in ("sumsq", "final_sums"):
        if phase == "sumsq":
            got = tb.sumsq(grads, weights=backups, eta=eta)
            want = REF.sumsq(grads, weights=backups, eta=eta)
            mag = want.double().abs()
        else:
            got = tb.final_sums(points, backups, grads, eta=eta)
            want = REF.final_sums(points, backups, grads, eta=eta)
            mag = torch.stack([sum((x.double() - b.double()).abs().mul(g.double().abs()).sum()
                                   for x, b, g in zip(points, backups, grads))
                               + want[k].double().abs() for k in range(3)])
        _asam_sums_close(got, want, mag, dtype, phase)
        return
    ours, ref = (dict(p=_clone(points), b=_clone(backups), g=_clone(grads),
                      m=_tensors(SIZES, dtype, 21, scale=0.1),
                      v=[v.abs() for v in _tensors(SIZES, dtype, 22, scale=0.1)])
                 for _ in range(2))
    for backend, c in ((tb, ours), (REF, ref)):
        if phase in ("backup_ascent", "ascent"):
            if phase == "backup_ascent":  # T must come from the params (= theta_0 then)
                c["b"] = [torch.full_like(b, 3.0) for b in c["b"]]
            scale = torch.tensor(0.37, dtype=_acc(dtype))
            backend.backup_ascent(c["p"], c["g"], c["b"], scale, phase == "backup_ascent", eta=eta)
        elif phase == "write_point":
            out = [torch.zeros_like(p) for p in c["p"]]
            backend.write_point(out, c["p"], c["b"], c["g"], coeffs, eta=eta)
            c["p"] = out
        elif phase == "write_grad_restore":
            backend.write_grad_restore(c["p"], c["p"], c["b"], c["g"], coeffs, eta=eta)
        elif phase == "sgd_update":
            backend.sgd_update(c["p"], c["p"], c["b"], c["g"], c["m"], coeffs, lr=0.05,
                               eta=eta, init_bufs=False, **SGD_CASES["nesterov-max"])
        else:
            backend.adam_update(c["p"], c["p"], c["b"], c["g"], c["m"], c["v"], coeffs, lr=1e-3,
                                beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
                                decoupled=True, maximize=False, step_size=1e-2,
                                bias_correction2_sqrt=0.05, eta=eta)
    for key in ours:
        assert_match(ours[key], ref[key], f"{phase}: {key}")


# ---------------------------------------------------------- whole optimizer
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 33, bias=False), nn.BatchNorm1d(33), nn.ReLU(), nn.Linear(33, 1, bias=False),
                         nn.Flatten(0))


def _train(backend, base, hyper, *, search):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 6, generator=gen), torch.randn(24, generator=gen)
    model = _model()
    hyper = dict(hyper)
    group_rhos = hyper.pop("group_rhos", None)  # per-module param groups with their own rho
    params = (model.parameters() if group_rhos is None else
              [{"params": m.parameters(), "rho": r}
               for m, r in zip((model[0], model[1], model[3]), group_rhos)])
    opt = XSAM(params, base, rho=0.1, alpha=0.6, backend=backend, model=model,
               search_interval=1 if search else None, **hyper)
    loss_fn = nn.MSELoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    def search_loss():
        return loss_fn(model(x), y)

    for _ in range(3):
        opt.step(closure, search_loss=search_loss if search else None)
    return model, opt


OPTIMIZER_CASES = {
    "sgd-nesterov": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                     False),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05), False),
    "sgd-dynamic-alpha": (torch.optim.SGD, dict(lr=0.1, momentum=0.9), True),
    "rmsprop-unfused": (torch.optim.RMSprop, dict(lr=1e-2), False),
    # ASAM geometry: weights only (BatchNorm's 1-d tensors keep T = 1), and every tensor
    "asam-adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05, adaptive=True), False),
    "asam-all-sgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, adaptive=True,
                                           adaptive_weights_only=False), False),
    # the options of the optimizer layer: per-group rho, clipping of G, interval
    "groups-clip-interval": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, interval=2,
                                                   group_rhos=(0.05, 0.1, 0.2),
                                                   max_grad_norm=0.05), True),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimizer_matches_reference(tm, case):
    base, hyper, search = OPTIMIZER_CASES[case]
    m1, o1 = _train("triton", base, hyper, search=search)
    m2, o2 = _train("reference", base, hyper, search=search)
    assert {b.backend.name for b in o1._buckets()} == {"triton"}
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert o1.alpha == o2.alpha
    if search:
        assert [a for a, _ in o1.search_curve] == [a for a, _ in o2.search_curve]
        torch.testing.assert_close(torch.tensor(o1.search_curve), torch.tensor(o2.search_curve),
                                   rtol=1e-5, atol=1e-6)
