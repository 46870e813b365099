"""What the benchmarks time: XSAM per backend, the XSAM baselines, and torch's own SGD.

An :class:`Impl` builds an optimizer on a list of parameters. ``kind`` says how
one step is taken: ``"xsam"`` is ``first_step(0)``, the gradient at the ascent
point, ``second_step(False)`` (fixed alpha, one ascent); ``"base"`` is a plain
``step()`` (torch's optimizers, the peers of the host-overhead benchmark).
Every implementation uses the same hyper-parameters (SGD, momentum, weight decay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

import xsam_fast
from xsam_fast import XSAM
from xsam_fast.backends import get_backend

from .baselines import BASELINES
from .shapes import Tensors3

# hyper-parameters of every timed step
RHO, ALPHA, LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.5, 1e-3, 0.9, 5e-4

#: baselines timed by default; "compiled" (torch.compile, a minute or more of compilation
#: per case on a CPU) by default on CUDA only
DEFAULT_BASELINES = {
    "cpu": ["authors-style", "foreach"],
    "cuda": ["authors-style", "foreach", "compiled"],
}

#: torch's own SGD, the peers of the host-overhead benchmark: label -> SGD keyword
TORCH_SGD = {"torch-sgd-fused": "fused", "torch-sgd-foreach": "foreach"}

_ALIASES = {"authors": "authors-style", "authors_style": "authors-style"}


def base_kwargs() -> dict[str, Any]:
    """The base optimizer's hyper-parameters (torch.optim.SGD)."""
    return dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


@dataclass
class Impl:
    """One thing to time: a label and how to build it on a list of parameters."""

    label: str
    make: Callable[[list[Tensor]], torch.optim.Optimizer]
    kind: Literal["xsam", "base"] = "xsam"
    backup_first: bool = False  # call backup_param() before first_step (the authors' sequence)
    backend: str | None = None  # xsam_fast backend name, None for the others
    min_warmup: int = 0  # untimed steps it needs first (torch.compile compiles in them)

    def supports(self, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
        """Whether it runs on ``dtype`` tensors on ``device``, and if not why."""
        if self.backend is None:
            return True, ""
        try:
            get_backend(self.backend, device, dtype)
        except RuntimeError as exc:
            return False, str(exc)
        return True, ""


def xsam_impl(backend: str, nonfinite: str = "warn") -> Impl:
    """``xsam_fast.XSAM`` on ``backend`` (label ``xsam:<backend>``)."""

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return XSAM(
            params,
            torch.optim.SGD,
            rho=RHO,
            alpha=ALPHA,
            backend=backend,
            nonfinite=nonfinite,
            **base_kwargs(),
        )

    return Impl(f"xsam:{backend}", make, backend=backend)


def baseline_impl(label: str, compile_backend: str = "inductor") -> Impl:
    """A baseline of :mod:`benchmarks.baselines` by its label; ``compile_backend`` is the
    ``torch.compile`` backend of ``"compiled"`` (labelled ``compiled:<backend>`` unless
    it is Inductor)."""
    cls = BASELINES[label]
    extra: dict[str, Any] = {}
    if label == "compiled":
        extra["compile_backend"] = compile_backend
        if compile_backend != "inductor":
            label = f"compiled:{compile_backend}"

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return cls(params, torch.optim.SGD, rho=RHO, alpha=ALPHA, **extra, **base_kwargs())

    # the authors' sequence needs backup_param(); the others back up inside first_step
    return Impl(label, make, backup_first=(label == "authors-style"), min_warmup=2 if extra else 0)


def torch_sgd_impl(label: str) -> Impl:
    """``torch.optim.SGD`` with ``fused=True`` or ``foreach=True`` (:data:`TORCH_SGD`)."""
    flag = TORCH_SGD[label]

    def make(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, **{flag: True}, **base_kwargs())

    return Impl(label, make, kind="base")


def resolve_impls(
    names: str | None,
    nonfinite: str,
    default: list[str],
    log: Callable[[str], None],
    compile_backend: str = "inductor",
) -> list[Impl]:
    """A comma list of xsam_fast backend names, baseline labels and :data:`TORCH_SGD`
    labels; ``None``: every available backend, then ``default``. An unavailable backend
    is skipped (logged); an unknown name exits. ``compile_backend``: see
    :func:`baseline_impl`."""
    available = xsam_fast.available_backends()
    if names is None:
        wanted = [*available, *default]
    else:
        wanted = [_ALIASES.get(n.strip(), n.strip()) for n in names.split(",") if n.strip()]
    status = xsam_fast.backend_status()
    impls = []
    for name in wanted:
        if name in BASELINES:
            impls.append(baseline_impl(name, compile_backend))
        elif name in TORCH_SGD:
            impls.append(torch_sgd_impl(name))
        elif name in status:
            if name not in available:
                log(f"skipping backend {name!r}: not available ({status[name]})")
                continue
            impls.append(xsam_impl(name, nonfinite))
        else:
            raise SystemExit(
                f"unknown implementation {name!r}; choose from "
                f"{', '.join([*status, *BASELINES, *TORCH_SGD])}"
            )
    return impls


def prepare_step(
    impl: Impl, master: Tensors3
) -> tuple[Callable[[], None], torch.optim.Optimizer, list[Tensor]]:
    """Fresh copies of ``master`` (params, first and second gradients), the optimizer, and a
    callable taking one whole step (gradient assignments included)."""
    params = [torch.nn.Parameter(t.clone()) for t in master[0]]
    g1 = [t.clone() for t in master[1]]  # implementations may overwrite .grad in place
    g2 = [t.clone() for t in master[2]]
    opt = impl.make(params)

    def step() -> None:
        for p, g in zip(params, g1):
            p.grad = g
        if impl.kind == "base":
            opt.step()
            return
        if impl.backup_first:
            opt.backup_param()
        opt.first_step(0)
        for p, g in zip(params, g2):  # "the gradient at the ascent point"
            p.grad = g
        opt.second_step(False)

    return step, opt, params


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of distinct tensor storages held in the optimizer's state and its base
    optimizer's."""
    seen: set[tuple[int, int]] = set()
    total = 0
    states = [opt.state]
    base = getattr(opt, "base_optimizer", None)
    if base is not None:
        states.append(base.state)
    for state in states:
        for per_param in state.values():
            for value in per_param.values():
                if isinstance(value, Tensor):
                    storage = value.untyped_storage()
                    key = (storage.data_ptr(), storage.nbytes())
                    if key not in seen:
                        seen.add(key)
                        total += storage.nbytes()
    return total
