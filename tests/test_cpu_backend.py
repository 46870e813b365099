"""The fused C++ CPU backend (``backend="cpu"``) against the reference backend."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import xsam_fast
from backend_contract import ADAM_CASES, DTYPES, SGD_CASES, check_phase, make_case, run_phase

if "cpu" not in xsam_fast.available_backends():
    pytest.skip(f"cpu backend unavailable: {xsam_fast.backend_status()['cpu']}",
                allow_module_level=True)

from xsam_fast.backends.cpu import CpuBackend  # noqa: E402

IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)


@dtypes
@pytest.mark.parametrize("phase", ["sumsq", "final_sums", "backup_ascent", "ascent",
                                   "write_point", "write_grad_restore"])
def test_phase_matches_reference(phase, dtype):
    check_phase(CpuBackend, phase, dtype)


@dtypes
@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_update_matches_reference(case, dtype):
    check_phase(CpuBackend, "sgd_update", dtype, **SGD_CASES[case])


@dtypes
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_update_matches_reference(case, dtype):
    check_phase(CpuBackend, "adam_update", dtype, **ADAM_CASES[case])


@pytest.mark.parametrize("phase", ["sumsq", "final_sums", "backup_ascent", "write_point"])
def test_empty_lists(phase):
    out = run_phase(CpuBackend(), phase, make_case(torch.float32, sizes=[]), torch.float32)
    if phase == "sumsq":
        assert out.item() == 0.0
    if phase == "final_sums":
        assert out.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("phase", ["sumsq", "final_sums"])
def test_reductions_do_not_depend_on_thread_count(phase):
    case = make_case(torch.float32, sizes=[1_000_003, 17, 250_000])
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run_phase(CpuBackend(), phase, case, torch.float32))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:]), results


def test_mismatched_lists_raise_clear_errors():
    backend = CpuBackend()
    a, b = [torch.zeros(3)], [torch.zeros(4)]
    with pytest.raises(RuntimeError, match="differs in size"):
        backend.final_sums(a, b, a)
    with pytest.raises(RuntimeError, match="share a dtype"):
        backend.final_sums(a, [torch.zeros(3, dtype=torch.float64)], a)
    with pytest.raises(RuntimeError, match="contiguous"):
        backend.sumsq([torch.zeros(4, 4).t()])


# ------------------------------------------------------------------ whole optimizer
def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    # no conv bias before BN: its gradient is rounding noise, which Adam would amplify
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).to(dtype)


def _train(backend: str, dtype: torch.dtype, base, steps: int, search: bool, **kw):
    model = _model(dtype)
    opt = xsam_fast.XSAM(model.parameters(), base, steps=steps, backend=backend, model=model,
                         alpha_delta=0.25, **kw)  # a 9-point grid keeps the search cheap
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
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
    "sgd-nesterov-wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                              weight_decay=5e-4)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "rmsprop-unfused": (torch.optim.RMSprop, dict(lr=1e-3)),
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
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=TOL[dtype], atol=TOL[dtype])


def test_bf16_optimizer_stays_within_a_few_ulp_of_reference():
    got, _ = _train("cpu", torch.bfloat16, torch.optim.SGD, 1, False, lr=0.05, momentum=0.9)
    want, _ = _train("reference", torch.bfloat16, torch.optim.SGD, 1, False, lr=0.05,
                     momentum=0.9)
    for g, w in zip(got, want):
        # 4 steps of 1-ulp rounding differences may compound, but only by a few units
        torch.testing.assert_close(g.float(), w.float(), rtol=4 * 2**-8, atol=1e-3)


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

        for _ in range(3):
            opt.step(closure)
        results.append([p.detach().float() for p in params])
    for g, w in zip(*results):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)  # bf16 param in the mix


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
