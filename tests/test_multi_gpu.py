"""Parameters on a GPU other than the current one, and on two GPUs at once (needs 2 GPUs).

Every launch must run under its parameters' device and every bucket's scalars must
live on that bucket's device: a step on ``cuda:1`` while ``cuda:0`` is current, and
a model split over ``cuda:0`` and ``cuda:1``, must equal the same step on the CPU's
reference backend (sums over both devices combined, scalars copied back).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xsam_fast
from xsam_fast import XSAM

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
GPU_BACKENDS = [b for b in ("triton", "cuda") if b in xsam_fast.available_backends()]


class _Split(nn.Module):
    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 8).to(first)
        self.b = nn.Linear(8, 3).to(second)

    def forward(self, x):
        h = torch.tanh(self.a(x.to(self.a.weight.device)))
        return self.b(h.to(self.b.weight.device))


def _train(backend: str, first: str, second: str) -> list[torch.Tensor]:
    model = _Split(first, second)
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        steps=2,
        lr=0.1,
        momentum=0.9,
        backend=backend,
        model=model,
    )
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    for i in range(3):

        def closure():
            out = model(x)
            loss = nn.functional.cross_entropy(out, y.to(out.device))
            loss.backward()
            return loss

        opt.step(
            closure,
            search_loss=lambda: nn.functional.cross_entropy(model(x), y.to(model.b.weight.device)),
            update_alpha=(i == 1),
        )
    torch.cuda.synchronize()
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize(
    "devices", [("cuda:1", "cuda:1"), ("cuda:0", "cuda:1")], ids=["cuda1-only", "two-devices"]
)
@pytest.mark.parametrize("backend", GPU_BACKENDS or ["none"])
def test_steps_where_the_parameters_are(backend, devices):
    if backend == "none":
        pytest.skip("no GPU backend available")
    torch.cuda.set_device(0)
    got = _train(backend, *devices)
    want = _train("reference", "cpu", "cpu")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
