"""The README's Python examples run as printed.

Each example is found by a line it contains and executed with only the names it
assumes from the surrounding text (``model``, ``loader``, ``criterion``...)
defined; the examples that need several processes or a GPU (DDP, FSDP2, fp16 on
CUDA, the Lightning method) are covered by their own tests instead.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"README: {len(found)} python blocks contain {marker!r}"
    return found[0]


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def moved(model: nn.Module, before: list[torch.Tensor]) -> bool:
    """Whether the weights moved (a bias in front of BatchNorm has no gradient)."""
    return all(not torch.equal(p, q) for p, q in zip(model.parameters(), before) if p.dim() > 1)


def test_closure_api_and_dynamic_alpha():
    ns: dict = {}
    exec(block("# torch convention"), ns)
    assert torch.isfinite(ns["loss"]) and ns["opt"].step_count == 1
    ns["batch_idx"] = 0
    exec(block("# forward only: XSAM runs it under no_grad"), ns)
    assert ns["opt"].step_count == 2 and len(ns["opt"].search_curve) == 21


def test_authors_call_sequence():
    model = bn_model()
    gen = torch.Generator().manual_seed(0)
    loader = [
        (torch.randn(8, 10, generator=gen), torch.randint(0, 2, (8,), generator=gen))
        for _ in range(2)
    ]
    before = snapshot(model)
    ns = dict(torch=torch, model=model, loader=loader, criterion=nn.CrossEntropyLoss())
    exec(block("from xsam_fast import XSAM, disable_running_stats"), ns)
    assert ns["opt"].step_count == 2 and len(ns["opt"].search_history) == 1
    assert moved(model, before)
    # the block's last line gives BN back what the loop's last disable took
    assert model[1].momentum == 0.1 and int(model[1].num_batches_tracked) == 2


def test_compat_drop_in():
    args = types.SimpleNamespace(
        steps=2,
        rho=0.05,
        rho_max=0.2,
        alpha=1.0,
        alpha_max=2.0,
        alpha_delta=0.1,
        eps=1e-12,
        lr=0.1,
        mo=0.9,
        wd=5e-4,
    )
    ns = dict(model=bn_model(), optim=torch.optim, args=args)
    exec(block("from xsam_fast.compat import XSAM"), ns)
    # the authors' per-step rho, times the steps: xsam_fast's total rho
    assert ns["optimizer"].param_groups[0]["rho"] == pytest.approx(0.1)


def test_option_examples_construct():
    model = bn_model()
    ns = dict(
        torch=torch,
        XSAM=__import__("xsam_fast").XSAM,
        model=model,
        backbone=model[:3],
        head=model[3],
    )
    exec(block("# interval: XSAM on calls 0, 2, 4"), ns)
    assert ns["opt"].adaptive


def test_gradient_accumulation_example():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 2))
    from xsam_fast import XSAM

    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 10, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    before = snapshot(model)
    ns = dict(model=model, opt=opt, x=x, y=y, criterion=nn.CrossEntropyLoss())
    exec(block("micro = list(zip(x.split(32), y.split(32)))"), ns)
    assert opt.step_count == 1 and moved(model, before)


def _stepped_model_and_opt():
    from xsam_fast import XSAM

    model = bn_model()
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=model)
    x, y = torch.randn(8, 10), torch.randint(0, 2, (8,))
    opt.step(lambda: nn.functional.cross_entropy(model(x), y).backward())
    return model, opt, x, y


def test_dcp_example(tmp_path, monkeypatch):
    import warnings

    monkeypatch.chdir(tmp_path)
    model, opt, _, _ = _stepped_model_and_opt()
    alpha = opt.alpha
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        exec(block("dcp.save("), dict(model=model, opt=opt))
    assert (tmp_path / "ckpt").is_dir() and opt.alpha == alpha


def test_ema_hook_example():
    model, opt, x, y = _stepped_model_and_opt()
    ns = dict(model=model, opt=opt)
    exec(block("get_ema_multi_avg_fn"), ns)
    opt.step(lambda: nn.functional.cross_entropy(model(x), y).backward())
    assert int(ns["ema"].n_averaged) == 1


def test_psi_is_documented_in_radians():
    text = " ".join(README.read_text().split())
    assert "`psi` (the angle between v0 and v1, in radians)" in text
    assert "psi (radians)" in text
