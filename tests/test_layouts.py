"""Parameters whose storage is dense but not contiguous, or not 16-byte aligned, stay on
the fused backends and step as the reference backend steps them.

channels_last is the recommended layout of convolutions on GPUs; its weights are
dense (every element in ``[data_ptr, data_ptr + numel)``) with permuted strides, and
their gradients have the same strides, so the fused kernels step them in memory
order. A parameter that is a view one element into a larger storage is misaligned
for 16-byte vector loads; only that tensor may take the scalar path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import STEP_BACKENDS, backend_loaded, buckets_of
from xsam_fast import XSAM

FAST = [b for b in STEP_BACKENDS if b != "reference"]


class _Net(nn.Module):
    """A channels_last conv net with one misaligned parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, bias=False)  # a bias before BN has a ~0 gradient,
        self.bn = nn.BatchNorm2d(6)  # which AdamW would amplify to noise
        self.conv2 = nn.Conv2d(6, 5, 3, bias=False)
        self.to(memory_format=torch.channels_last)
        storage = torch.randn(5 * 4 + 1) * 0.1
        self.head = nn.Parameter(storage[1:].view(5, 4))  # one element into its storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = self.conv2(h).mean(dim=(2, 3))
        return h @ self.head


def _run(backend: str, base: str, steps: int = 3) -> tuple[nn.Module, XSAM]:
    model = _Net()
    cls, kw = {
        "sgd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
        "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
    }[base]
    opt = XSAM(
        model.parameters(), cls, rho=0.2, steps=2, alpha=0.7, backend=backend, model=model, **kw
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 7, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (4,), generator=gen)
    for _ in range(steps):

        def closure():
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model, opt


def test_the_layouts_are_what_this_test_needs():
    model = _Net()
    assert not model.conv1.weight.is_contiguous()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.head.data_ptr() % 16 != 0


@pytest.mark.parametrize("base", ["sgd", "adamw"])
@pytest.mark.parametrize(
    "backend",
    FAST or [pytest.param("none", marks=pytest.mark.skip(reason="no fused backend runs here"))],
)
def test_channels_last_and_misaligned_stay_fused_and_match_reference(backend, base):
    with backend_loaded(backend):
        got, opt = _run(backend, base)
        assert {b.kernels.name for b in buckets_of(opt)} == {backend}
    want, _ = _run("reference", base)
    assert got.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(got.named_parameters(), want.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_gradient_with_other_strides_takes_the_reference_path():
    """A parameter whose gradient does not share its strides cannot be stepped in memory
    order: that parameter alone goes to the reference backend, and the step is right."""
    p = nn.Parameter(torch.randn(3, 4))
    q = nn.Parameter(torch.randn(5))
    opt = XSAM([p, q], torch.optim.SGD, lr=0.1, rho=0.1)
    p.grad = torch.randn(4, 3).t()  # strides (1, 3): not p's (4, 1)
    q.grad = torch.randn(5)
    names = {id(o): b.kernels.name for b in buckets_of(opt) for o in b.owners}
    assert names[id(p)] == "reference"


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_parameter_storage_replaced_between_steps(backend):
    """``p.data = ...`` (what moving or re-materialising a model does) between steps: the
    step acts on the new storage, as the reference backend does."""

    def run(name: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9, backend=name)
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        for i in range(3):
            if i == 1:
                for p in model.parameters():
                    p.data = p.data.clone()  # new storage, same values
            opt.step(lambda: nn.functional.cross_entropy(model(x), y).backward())
        return [p.detach().clone() for p in model.parameters()]

    with backend_loaded(backend):
        got = run(backend)
    for a, b in zip(got, run("reference")):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
