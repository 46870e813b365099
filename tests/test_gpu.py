"""The Triton backend on a CUDA device: phases vs reference, no host syncs, graphs, >2**31.

Skipped (not passed) where no CUDA device is visible. ``benchmarks/gpu_check.sh``
runs these on a GPU machine (with tests/test_cuda_backend.py).
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from xsam_fast import XSAM  # noqa: E402
from xsam_fast import coefficients as C  # noqa: E402
from xsam_fast.backends import backend_status  # noqa: E402
from xsam_fast.backends.reference import ReferenceBackend  # noqa: E402

DEV = torch.device("cuda")
SIZES = [1, 3, 1023, 0, 4096, 4097, 70001, 1 << 20]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
REF = ReferenceBackend()
KERNEL_MODULES = ["reductions", "perturb", "update"]


@pytest.fixture(scope="module")
def tm():
    status = backend_status()
    if status["triton"]:
        pytest.fail(f"the triton backend is unavailable on a CUDA machine: {status['triton']}")
    return importlib.import_module("xsam_fast.backends.triton")


@pytest.fixture
def tb(tm):
    return tm.TritonBackend()


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tensors(sizes, dtype, seed, scale=1.0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return [(torch.randn(n, generator=gen, device=DEV) * scale).to(dtype) for n in sizes]


def _ordered(t):
    i = t.view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def assert_match(ours, ref, what=""):
    """fp32: rtol 1e-6, fp64: 1e-12, fp16/bf16: at most 1 ulp of the stored value."""
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a.numel() == 0:
            continue
        if a.dtype in (torch.float16, torch.bfloat16):
            ulps = (_ordered(a) - _ordered(b)).abs()
            bad = (ulps > 1).nonzero().flatten()
            assert bad.numel() == 0, (f"{what}[{k}]: {bad.numel()} elements > 1 ulp, e.g. "
                                      f"{a[bad[:5]].tolist()} vs {b[bad[:5]].tolist()}")
        else:
            rtol = 1e-12 if a.dtype == torch.float64 else 1e-6
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2,
                                       msg=lambda m: f"{what}[{k}]: {m}")


def _setup(dtype, sizes=SIZES):
    backups, grads = _tensors(sizes, dtype, 0), _tensors(sizes, dtype, 1)
    points = [(b.double() + 0.1 * d.double()).to(dtype)
              for b, d in zip(backups, _tensors(sizes, dtype, 2))]
    return points, backups, grads, torch.tensor([0.8, -0.35], dtype=_acc(dtype), device=DEV)


def _clone(ts):
    return [t.clone() for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_phases_match_reference_on_cuda(tb, dtype):
    points, backups, grads, coeffs = _setup(dtype)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    # reductions, against a float64 ground truth scaled by the sum of |terms|
    truth = torch.zeros(3, dtype=torch.float64, device=DEV)
    mag = torch.zeros(3, dtype=torch.float64, device=DEV)
    for x, b, g in zip(points, backups, grads):
        d, gw = x.double() - b.double(), g.double()
        for k, term in enumerate((gw * gw, d * d, d * gw)):
            truth[k] += term.sum()
            mag[k] += term.abs().sum()
    sums = tb.final_sums(points, backups, grads)
    assert sums.device.type == "cuda" and sums.dtype == _acc(dtype)
    assert ((sums.double() - truth).abs() <= rtol * mag).all(), (sums, truth)
    assert abs(float(tb.sumsq(grads)) - float(truth[0])) <= rtol * float(mag[0])
    # elementwise phases
    scale = torch.tensor(0.037, dtype=_acc(dtype), device=DEV)
    p1, p2, b1, b2 = _clone(points), _clone(points), _clone(grads), _clone(grads)
    tb.backup_ascent(p1, grads, b1, scale, True)
    REF.backup_ascent(p2, grads, b2, scale, True)
    assert_match(p1, p2, "ascent")
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    o1, o2 = [torch.empty_like(p) for p in points], [torch.empty_like(p) for p in points]
    tb.write_point(o1, points, backups, grads, coeffs)
    REF.write_point(o2, points, backups, grads, coeffs)
    assert_match(o1, o2, "write_point")
    p1, p2, g1, g2 = _clone(points), _clone(points), _clone(grads), _clone(grads)
    tb.write_grad_restore(p1, p1, backups, g1, coeffs)
    REF.write_grad_restore(p2, p2, backups, g2, coeffs)
    assert_match(g1, g2, "write_grad_restore")
    assert all(torch.equal(x, b) for x, b in zip(p1, backups))
    for nesterov, init in ((False, True), (True, False)):
        bufs = _tensors(SIZES, dtype, 5)
        p1, p2, k1, k2 = _clone(points), _clone(points), _clone(bufs), _clone(bufs)
        kw = dict(lr=0.05, weight_decay=5e-4, momentum=0.9, dampening=0.1, nesterov=nesterov,
                  maximize=False, init_bufs=init)
        tb.sgd_update(p1, p1, backups, grads, k1, coeffs, **kw)
        REF.sgd_update(p2, p2, backups, grads, k2, coeffs, **kw)
        assert_match(p1, p2, "sgd")
        assert_match(k1, k2, "sgd bufs")
    for decoupled in (True, False):
        ms, vs = _tensors(SIZES, dtype, 6, 0.1), [v.abs() for v in _tensors(SIZES, dtype, 7, 0.1)]
        p1, p2, m1, m2, v1, v2 = (_clone(t) for t in (points, points, ms, ms, vs, vs))
        kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
                  decoupled=decoupled, maximize=False, step_size=1e-3 / (1 - 0.9 ** 3),
                  bias_correction2_sqrt=math.sqrt(1 - 0.999 ** 3))
        tb.adam_update(p1, p1, backups, grads, m1, v1, coeffs, **kw)
        REF.adam_update(p2, p2, backups, grads, m2, v2, coeffs, **kw)
        assert_match(m1, m2, "exp_avg")
        assert_match(v1, v2, "exp_avg_sq")
        assert_match(p1, p2, "adam")


def test_triton_reductions_deterministic_on_cuda(tb, tm):
    points, backups, grads, _ = _setup(torch.float32)
    first = tb.final_sums(points, backups, grads)
    for other in (tb, tm.TritonBackend()):
        for _ in range(3):
            assert torch.equal(other.final_sums(points, backups, grads), first)
            assert torch.equal(other.sumsq(grads), tb.sumsq(grads))


def test_triton_launches_per_phase_cuda(tb, monkeypatch):
    counter = {"n": 0}
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"xsam_fast.triton_kernels.{name}")
        for attr in vars(module).values():
            run = getattr(attr, "run", None)
            if run is None or not hasattr(attr, "fn") or not hasattr(attr, "__getitem__"):
                continue

            def counted(*args, _run=run, **kwargs):
                counter["n"] += 1
                return _run(*args, **kwargs)

            monkeypatch.setattr(attr, "run", counted)
    counts = []
    for n in (3, 30, 300):
        points, backups, grads, coeffs = _setup(torch.float32, [(37 * i) % 5000 + 1
                                                               for i in range(n)])
        before = counter["n"]
        tb.sumsq(grads)
        tb.backup_ascent(points, grads, backups, coeffs[0], True)
        tb.final_sums(points, backups, grads)
        tb.sgd_update(points, points, backups, grads, _clone(grads), coeffs, lr=0.1,
                      weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False,
                      maximize=False, init_bufs=False)
        counts.append(counter["n"] - before)
    assert counts == [6, 6, 6]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).to(DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_step_makes_no_host_sync(tm, dtype):
    model = _model().to(dtype)
    x = torch.randn(16, 3, 8, 8, device=DEV, dtype=dtype)
    y = torch.randint(0, 10, (16,), device=DEV)
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.05, backend="triton", model=model,
               nonfinite="none", lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # first step: momentum buffers, tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            opt.step(closure)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_optimizer_matches_reference_on_cuda(dtype):
    results = []
    for backend in ("triton", "reference"):
        model = _model().to(dtype)
        x = torch.randn(16, 3, 8, 8, device=DEV, generator=torch.Generator(DEV).manual_seed(1))
        x = x.to(dtype)
        y = torch.arange(16, device=DEV) % 10
        opt = XSAM(model.parameters(), torch.optim.AdamW, rho=0.05, alpha=0.7, backend=backend,
                   model=model, lr=1e-3, weight_decay=0.05)
        loss_fn = nn.CrossEntropyLoss()

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x).float(), y)
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        results.append([p.detach().float() for p in model.parameters()])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **tol)


def test_triton_phases_capture_in_cuda_graph(tb):
    """sumsq -> ascent -> final sums -> coefficients -> SGD update, captured and replayed."""
    points, backups, grads, _ = _setup(torch.float32, [1023, 4097, 1, 70001])
    params0 = _clone(points)
    bufs = [torch.zeros_like(p) for p in points]

    def phases(params, bufs):
        scale = C.ascent_scale(tb.sumsq(grads), 0.05, 1e-12)
        tb.backup_ascent(params, grads, backups, scale, True)
        psi, norm_g, norm_d = C.angle(tb.final_sums(params, backups, grads), 1e-12)
        coeffs = C.interpolation_coefficients(norm_g, 0.7, psi, norm_g, norm_d, 1e-12)
        tb.sgd_update(params, params, backups, grads, bufs, coeffs, lr=0.1, weight_decay=5e-4,
                      momentum=0.9, dampening=0.0, nesterov=False, maximize=False,
                      init_bufs=False)

    eager_p, eager_b = _clone(params0), _clone(bufs)
    phases(eager_p, eager_b)  # also builds and caches every table before the capture
    graph_p, graph_b = _clone(params0), _clone(bufs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        phases(_clone(params0), _clone(bufs))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        phases(graph_p, graph_b)
    for p, p0 in zip(graph_p, params0):
        p.copy_(p0)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(graph_p + graph_b, eager_p + eager_b):
        assert torch.equal(a, b)


def test_triton_tensor_over_2_31_elements(tb):
    n = 2**31 + 4099
    need = 3 * n * 2 + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    p = torch.zeros(n, dtype=torch.bfloat16, device=DEV)
    g = torch.zeros_like(p)
    tail = torch.arange(1, 5000, device=DEV, dtype=torch.float32) / 1000
    g[-tail.numel():] = tail.to(torch.bfloat16)
    g[:3] = 1.0
    expected = float((tail.to(torch.bfloat16).double() ** 2).sum()) + 3.0
    assert abs(float(tb.sumsq([g])) - expected) <= 1e-5 * expected
    b = torch.empty_like(p)
    tb.backup_ascent([p], [g], [b], torch.tensor(2.0, device=DEV), True)
    assert torch.equal(p[-tail.numel():], (2 * g[-tail.numel():].float()).to(torch.bfloat16))
    assert torch.equal(p[:3].float(), torch.full((3,), 2.0, device=DEV))
    assert int((b != 0).sum()) == 0


def test_triton_vectorized_loads_in_ptx(tb):
    """The alignment hints work: the compiled SGD kernel uses vector loads for fp32."""
    from xsam_fast.triton_kernels import update

    points, backups, grads, coeffs = _setup(torch.float32, [4096 * 3, 4096])
    tb.sgd_update(points, points, backups, grads, _clone(grads), coeffs, lr=0.1,
                  weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False,
                  maximize=False, init_bufs=False)
    kernels = list(_compiled(update._sgd_kernel))
    assert kernels, "found no compiled SGD kernel in Triton's cache"
    ptx = "\n".join(k.asm.get("ptx", "") for k in kernels)
    assert "ld.global" in ptx
    assert ".v4." in ptx or ".v2." in ptx, "no vectorised global loads in the SGD kernel"


def _compiled(kernel):
    caches = getattr(kernel, "device_caches", {})
    for entry in caches.values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        yield from cache.values()
