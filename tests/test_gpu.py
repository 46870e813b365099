"""The Triton backend on a CUDA device: no host syncs, CUDA graphs, >2**31 elements, devices.

What the phases compute on a GPU is checked by ``test_backend_contract.py`` (target
``triton-cuda``). Skipped (not passed) where no CUDA device is visible;
``benchmarks/gpu_check.sh`` runs these on a GPU machine (with tests/test_cuda_backend.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from backend_contract import (
    ADAM_CASES,
    SGD_CASES,
    adam_hyper,
    clone_case,
    make_case,
    make_sc,
    sgd_hyper,
)
from xsam_fast import XSAM  # noqa: E402
from xsam_fast.backends import backend_status  # noqa: E402
from xsam_fast.backends import base as B  # noqa: E402
from xsam_fast.backends.reference import ReferenceBackend  # noqa: E402

DEV = torch.device("cuda")
SIZES = [1, 3, 1023, 0, 4096, 4097, 70001, 1 << 20]
REF = ReferenceBackend()


@pytest.fixture(scope="module")
def tm():
    import triton_modules

    status = backend_status()
    if status["triton"]:
        pytest.fail(f"the triton backend is unavailable on a CUDA machine: {status['triton']}")
    if triton_modules.interpreted():
        triton_modules.reload(interpret=False)
    return triton_modules.backend_module()


@pytest.fixture
def tb(tm):
    return tm.TritonBackend()


SGD = SGD_CASES["momentum-wd"]


class _Step:
    """A bucket's packed lists and device vectors (``sc``, ``hyper``: made on ``device``
    unless given), and one XSAM step with SGD over them."""

    def __init__(self, tb, case, device=DEV, sc=None, hyper=None):
        self.tb, self.sgd = tb, SGD
        self.params = tb.pack(case["params"])
        self.grads, self.backups, self.bufs = (
            tb.pack(case[k], like=self.params) for k in ("grads", "backups", "bufs")
        )
        self.sc = make_sc(device) if sc is None else sc
        self.hyper = sgd_hyper(SGD, device) if hyper is None else hyper

    def run(self) -> None:
        tb, sc, h = self.tb, self.sc, self.sgd
        tb.sumsq(self.grads, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
        tb.ascent_scalars(sc, first=True, check=True)
        tb.backup_ascent(self.params, self.grads, self.backups, sc, self.hyper, backup=True)
        tb.final_sums(self.params, self.backups, self.grads, sc[B.SUMS], accumulate=False)
        tb.update_scalars(sc, check=True)
        tb.sgd_update(
            self.params,
            self.params,
            self.backups,
            self.grads,
            self.bufs,
            sc,
            self.hyper,
            weight_decay=h["weight_decay"] != 0,
            momentum=h["momentum"] != 0,
            nesterov=h["nesterov"],
            maximize=h["maximize"],
            init_bufs=h["init_bufs"],
        )

    def state(self) -> list[torch.Tensor]:
        return [t.clone() for t in (*self.params, *self.bufs, *self.backups, self.sc)]

    def load(self, state: list[torch.Tensor]) -> None:
        for t, s in zip((*self.params, *self.bufs, *self.backups, self.sc), state):
            t.copy_(s)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_phases_make_no_host_sync(tb, layout):
    """Packing (pinned, non-blocking copies), every phase and the scalar kernels run
    under torch.cuda.set_sync_debug_mode("error")."""
    case = make_case(torch.bfloat16, SIZES, layout=layout, device=DEV)
    adam_h = ADAM_CASES["adamw"]
    hyper_adam = adam_hyper(adam_h, DEV)
    steps = torch.full((len(SIZES),), adam_h["step"], device=DEV)
    coeffs = torch.tensor([0.3, -0.2], dtype=torch.float64, device=DEV)
    sc, hyper = make_sc(DEV), sgd_hyper(SGD, DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step = _Step(tb, case, sc=sc, hyper=hyper)
        step.run()
        sq = tb.pack(case["sq"], like=step.params)
        tb.write_point(step.bufs, step.params, step.backups, step.grads, coeffs, eta=0.05)
        tb.adam_update(
            step.params,
            step.params,
            step.backups,
            step.grads,
            step.bufs,
            sq,
            steps,
            step.sc,
            hyper_adam,
            weight_decay=True,
            decoupled=True,
            maximize=False,
        )
        tb.plain_scalars(step.sc, check=True)
        tb.write_grad_restore(step.params, step.params, step.backups, step.grads, step.sc[B.COEFFS])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in case["params"])


def test_triton_step_captures_in_a_cuda_graph(tb):
    """sumsq -> ascent scalars -> ascent -> final sums -> update scalars -> SGD update,
    captured once and replayed: equal to the eager step, and a learning rate written
    into ``hyper`` (as a scheduler would) is used by the next replay."""
    step = _Step(tb, make_case(torch.float32, [1023, 4097, 1, 70001], device=DEV))
    start = step.state()
    step.run()  # eager: compiles the kernels and builds every table first
    eager = step.state()
    step.hyper[B.H_LR] = 0.01
    step.load(start)
    step.run()
    eager_lr = step.state()
    step.hyper[B.H_LR] = SGD["lr"]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        step.load(start)
        step.run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    step.load(start)
    with torch.cuda.graph(graph):
        step.run()
    for lr, want in ((SGD["lr"], eager), (0.01, eager_lr)):
        step.hyper[B.H_LR].fill_(lr)
        step.load(start)
        graph.replay()
        torch.cuda.synchronize()
        for i, (got, ref) in enumerate(zip(step.state(), want)):
            assert torch.equal(got, ref), f"lr {lr}: tensor {i} differs after replay"


def test_triton_tensor_over_2_31_elements(tb):
    n = 2**31 + 4099
    need = 3 * n * 2 + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    p = torch.zeros(n, dtype=torch.bfloat16, device=DEV)
    g = torch.zeros_like(p)
    tail = torch.arange(1, 5000, device=DEV, dtype=torch.float32) / 1000
    g[-tail.numel() :] = tail.to(torch.bfloat16)
    g[:3] = 1.0
    b = torch.empty_like(p)
    params = tb.pack([p])
    assert params.layout.large
    grads, backups = tb.pack([g], like=params), tb.pack([b], like=params)
    sc = make_sc(DEV, eps=0.0)
    tb.sumsq(grads, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
    expected = float((tail.to(torch.bfloat16).double() ** 2).sum()) + 3.0
    assert abs(sc[B.SUMSQ].item() - expected) <= 1e-5 * expected
    hyper = torch.zeros(B.NHYPER, dtype=torch.float64, device=DEV)
    hyper[B.H_RADIUS] = 2 * sc[B.SUMSQ].sqrt()  # ascent scale 2 exactly
    tb.backup_ascent(params, grads, backups, sc, hyper, backup=True)
    assert torch.equal(p[-tail.numel() :], (2 * g[-tail.numel() :].float()).to(torch.bfloat16))
    assert torch.equal(p[:3].float(), torch.full((3,), 2.0, device=DEV))
    assert int((b != 0).sum()) == 0


def test_triton_vectorized_loads_in_ptx(tb, tm):
    """The kernel compiled at run time for aligned fp32 tensors has 128-bit loads."""
    from xsam_fast.triton_kernels import sgd

    step = _Step(tb, make_case(torch.float32, [4096 * 3, 4096], device=DEV))
    step.run()
    kernels = list(_compiled(sgd._sgd_kernel))
    assert kernels, "found no compiled SGD kernel in Triton's cache"
    ptx = "\n".join(k.asm.get("ptx", "") for k in kernels)
    assert "ld.global.v4.b32" in ptx, "no 128-bit global loads in the SGD kernel"


def _compiled(kernel):
    caches = getattr(kernel, "device_caches", {})
    for entry in caches.values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        yield from cache.values()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_launches_on_the_tensors_device(tb):
    """Tensors on cuda:1 while cuda:0 is current: every launch runs on cuda:1."""
    dev = torch.device("cuda", 1)
    case = make_case(torch.float32, [1023, 4097], device=dev)
    want_case = clone_case({k: [t.cpu() for t in v] for k, v in case.items()})
    with torch.cuda.device(0):
        step = _Step(tb, case, device=dev)
        step.run()
        torch.cuda.synchronize(dev)
    ref = _Step(REF, want_case, device=torch.device("cpu"))
    ref.run()
    for got, want in zip(step.state(), ref.state()):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ optimizer level
def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    ).to(DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_step_makes_no_host_sync(tm, dtype):
    model = _model().to(dtype)
    x = torch.randn(16, 3, 8, 8, device=DEV, dtype=dtype)
    y = torch.randint(0, 10, (16,), device=DEV)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.05,
        backend="triton",
        model=model,
        nonfinite="none",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
    )
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


def test_skipped_steps_warn_without_stats_and_without_a_sync(tm):
    """nonfinite="warn" (the default) with a NaN loss at every step: the skipped-step count
    reaches the host by a non-blocking copy, and a warning comes within a few steps,
    with no stats() call and no host synchronisation."""
    import time
    import warnings

    model = _model()
    x = torch.randn(16, 3, 8, 8, device=DEV)
    y = torch.randint(0, 10, (16,), device=DEV)
    opt = XSAM(model.parameters(), rho=0.05, backend="triton", model=model, lr=0.1)
    loss_fn = nn.CrossEntropyLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y) * float("nan")
        loss.backward()
        return loss

    opt.step(closure)  # builds the plan and the host copy of the count
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(20):
                opt.step(closure)
                if seen:
                    break
                time.sleep(0.01)  # host time for the copy to land (no wait on the device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert any("skipped" in str(w.message) for w in seen), [str(w.message) for w in seen]
    assert opt.stats()["skipped_steps"] >= 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_optimizer_matches_reference_on_cuda(dtype):
    results = []
    for backend in ("triton", "reference"):
        model = _model().to(dtype)
        x = torch.randn(16, 3, 8, 8, device=DEV, generator=torch.Generator(DEV).manual_seed(1))
        x = x.to(dtype)
        y = torch.arange(16, device=DEV) % 10
        opt = XSAM(
            model.parameters(),
            torch.optim.AdamW,
            rho=0.05,
            alpha=0.7,
            backend=backend,
            model=model,
            lr=1e-3,
            weight_decay=0.05,
        )
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
