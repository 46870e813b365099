"""A default XSAM step makes no host synchronisation, checked on the CPU.

On a GPU, reading a device value on the host (``item``, ``tolist``, ``bool``/
``float``/``int`` of a tensor, ``cpu()``, ``numpy()``, formatting) waits for the
device, and ``torch.tensor``/``torch.as_tensor`` of Python data onto the device is
a blocking copy. :class:`SyncSpy`, a ``TorchFunctionMode``, records every such
call made by the optimizer during a whole step: every read, every tensor made from
Python data with a ``device`` argument, and every tensor made from Python floats
anywhere (hyper-parameters must reach the device without one). Integer tables built
on the host (the Triton backend's pointer tables of a new gradient list) are the
arguments of a multi-tensor launch, copied from pinned memory with
``non_blocking=True``; they are allowed, and the GPU tests check that copy. The
closure's own forward and backward are the user's and are not watched. Checked on
every backend that runs here, in the default configuration (fixed alpha,
``nonfinite="warn"``), with SGD and AdamW, one and two ascents. The GPU tests confirm it with
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from conftest import STEP_BACKENDS, backend_loaded
from xsam_fast import XSAM

#: methods that read a device value on the host
READS = {
    Tensor.item,
    Tensor.tolist,
    Tensor.__bool__,
    Tensor.__float__,
    Tensor.__int__,
    Tensor.__index__,
    Tensor.__format__,
    Tensor.cpu,
    Tensor.numpy,
}
#: factories that copy Python data to the device when given it
FROM_DATA = {torch.tensor, torch.as_tensor}


class SyncSpy(TorchFunctionMode):
    """Records the calls that synchronise with a GPU while ``watching`` is True."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.watching = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watching:
            if func in READS:
                self.calls.append(func.__name__)
            elif (
                func in FROM_DATA
                and args
                and not isinstance(args[0], Tensor)
                and ("device" in kwargs or _has_float(args[0]))
            ):
                self.calls.append(f"{func.__name__}({args[0]!r})")
        return func(*args, **kwargs)


def _has_float(data) -> bool:
    """Whether Python data holds a float (a number a step must not turn into a tensor)."""
    if isinstance(data, (list, tuple)):
        return any(_has_float(x) for x in data)
    return isinstance(data, float)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2)),
}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_default_step_makes_no_host_sync(backend, base, steps):
    with backend_loaded(backend):
        _spy_on_steps(backend, base, steps)


def _spy_on_steps(backend: str, base: str, steps: int) -> None:
    model = _model()
    cls, kw = BASES[base]
    opt = XSAM(model.parameters(), cls, rho=0.1, steps=steps, backend=backend, model=model, **kw)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    spy = SyncSpy()

    def closure() -> Tensor:
        spy.watching = False  # the user's forward and backward
        try:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        finally:
            spy.watching = True

    for _ in range(2):  # the first steps build the plan and the state
        opt.step(closure)
        sched.step()  # a new learning rate reaches the device without a tensor from data
    with spy:
        opt.step(closure)
        sched.step()
        opt.step(closure)
    assert spy.calls == [], f"host synchronisations in a step: {spy.calls}"
    assert opt.stats()["skipped_steps"] == 0  # (reading the stats is the user's sync)


def test_the_spy_sees_synchronisations():
    """The spy itself: each kind of call it must catch is caught."""
    t = torch.ones(2)
    spy = SyncSpy()
    with spy:
        bool(t[0]), float(t[0]), int(t[0]), t[0].item(), t.tolist(), t.cpu(), t.numpy()
        f"{t[0]:.1f}", torch.tensor([1.0]), torch.as_tensor(2.0)
        torch.tensor([3], device="cpu")  # onto a device
        torch.as_tensor(t)  # a tensor: no copy from Python data
        torch.tensor([1, 2])  # a host integer table (a launch's argument)
    assert spy.calls == [
        "__bool__",
        "__float__",
        "__int__",
        "item",
        "tolist",
        "cpu",
        "numpy",
        "__format__",
        "tensor([1.0])",
        "as_tensor(2.0)",
        "tensor([3])",
    ]


def test_raise_mode_reads_the_flag():
    """``nonfinite="raise"`` is documented to read the flag on the host: the spy sees it."""
    model = _model()
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        lr=0.05,
        backend="reference",
        nonfinite="raise",
        model=model,
    )
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    spy = SyncSpy()

    def closure() -> Tensor:
        spy.watching = False
        try:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        finally:
            spy.watching = True

    opt.step(closure)
    with spy:
        opt.step(closure)
    assert spy.calls == ["__bool__", "__bool__"]
