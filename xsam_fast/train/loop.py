"""One training run: one method, one seed, a fixed number of epochs.

The three methods share everything but the optimizer step: the same model
initialisation (``torch.manual_seed(seed)``), the same batch order and
augmentation (a CPU generator seeded with ``seed``), the same base optimizer
(SGD with momentum and weight decay), the same cosine learning-rate schedule
over ``epochs`` (stepped once per epoch, as in the authors' ``train.py``) and
the same number of epochs:

* ``sgd``: the base optimizer alone, one forward/backward per batch;
* ``sam``: :class:`~xsam_fast.XSAM` with ``alpha = 1`` fixed (SAM's direction);
* ``xsam``: :class:`~xsam_fast.XSAM` whose alpha is searched on the first batch
  of every epoch and kept for the rest of it (``is_dynamic``, the authors'
  schedule), or fixed at ``alpha`` with ``is_dynamic=False``.

With ``interval=k`` SAM and XSAM take their full step on every k-th batch
(counted over the whole run) and a plain SGD step on the others; XSAM's search
then runs at the first full step of each epoch.

SAM and XSAM use the closure API (``opt.step(closure, search_loss=...)``) with
``model=`` so that only the first forward pass of a step moves the BatchNorm
running statistics. Mixed precision: forward passes under autocast (``amp``
bf16 or fp16); fp16 scales every backward pass with a GradScaler.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..optimizer import XSAM
from .data import Batches, Dataset
from .model import build_model
from .runtime import autocast, grad_scaler

METHODS = ("sgd", "sam", "xsam")


@dataclass
class TrainConfig:
    """Hyper-parameters of a run; names follow the authors' ``train.py`` flags."""

    epochs: int = 20
    bs: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 1e-3
    rho: float = 0.15  # total ascent length (each of the ``steps`` ascents: rho/steps)
    rho_max: float = 0.30
    steps: int = 1
    alpha: float = 1.0  # XSAM's alpha when not dynamic
    is_dynamic: bool = True
    alpha_max: float = 2.0
    alpha_delta: float = 0.1
    eps: float = 1e-12
    search: str = "grid"  # XSAM's search strategy
    backend: str = "auto"
    model: str = "smallcnn"
    width: int | None = None  # None: the model's default
    interval: int = 1  # SAM/XSAM: full step every interval-th batch, plain SGD between
    device: str = "cpu"
    amp: str = "none"  # "none", "bf16", "fp16"
    channels_last: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_optimizer(
    method: str, model: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """``(optimizer, base optimizer)`` for ``method``; they are the same object for SGD."""
    base_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)
    if method == "sgd":
        opt = torch.optim.SGD(model.parameters(), **base_kwargs)
        return opt, opt
    if method not in ("sam", "xsam"):
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    alpha = 1.0 if method == "sam" else cfg.alpha
    opt = XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=cfg.rho,
        steps=cfg.steps,
        rho_max=cfg.rho_max,
        alpha=alpha,
        alpha_max=cfg.alpha_max,
        alpha_delta=cfg.alpha_delta,
        eps=cfg.eps,
        backend=cfg.backend,
        model=model,
        interval=cfg.interval,
        search=cfg.search,
        **base_kwargs,
    )
    return opt, opt.base_optimizer


def make_model(data: Dataset, cfg: TrainConfig) -> nn.Module:
    """A freshly initialised model of ``cfg.model`` on ``cfg.device`` (channels-last if asked)."""
    model = build_model(cfg.model, data.in_channels, data.num_classes, cfg.width)
    model = model.to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def searches(method: str, cfg: TrainConfig) -> bool:
    """Whether ``method`` searches alpha (once per epoch, on its first batch)."""
    return method == "xsam" and cfg.is_dynamic


def skipped_steps(opt: torch.optim.Optimizer) -> int:
    """Steps XSAM skipped so far because of a non-finite gradient (0 for SGD)."""
    return int(opt.stats().get("skipped_steps", 0)) if isinstance(opt, XSAM) else 0


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Batches,
    generator: torch.Generator,
    cfg: TrainConfig,
    *,
    search_first_batch: bool,
    scaler: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``batches``; returns (mean train loss, train accuracy) at the
    batches' starting points (the first forward pass of each step).
    ``on_batch(n)`` is called after each step with the batch's size."""
    criterion = nn.CrossEntropyLoss()
    device = torch.device(cfg.device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for i, (x, y) in enumerate(batches.epoch(generator)):

        def forward() -> tuple[Tensor, Tensor]:
            with autocast(device, cfg.amp):
                out = model(x)
            return out, criterion(out.float(), y)

        def backward(loss: Tensor) -> None:
            (loss if scaler is None else scaler.scale(loss)).backward()

        if isinstance(opt, XSAM):
            first: list[Tensor] = []

            def closure() -> Tensor:
                opt.zero_grad()
                out, loss = forward()
                backward(loss)
                if not first:
                    first.append(out.detach())
                return loss

            if search_first_batch and i == 0:
                opt.request_search()  # done by the epoch's first full step (interval > 1)
            loss = opt.step(closure, search_loss=lambda: forward()[1], scaler=scaler)
            out = first[0]
        else:
            opt.zero_grad()
            out, loss = forward()
            backward(loss)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
        if scaler is not None:
            scaler.update()
        loss_sum += loss.detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if on_batch is not None:
            on_batch(len(y))
    return float(loss_sum) / seen, float(correct) / seen


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, cfg: TrainConfig) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` in eval mode."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches.epoch(None):
        with autocast(torch.device(cfg.device), cfg.amp):
            out = model(x)
        loss_sum += float(criterion(out.float(), y))
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
    return loss_sum / seen, correct / seen


def train_run(
    method: str,
    seed: int,
    data: Dataset,
    cfg: TrainConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Train a fresh model with ``method`` from ``seed``; yield one record per epoch.

    A record holds ``epoch, method, seed, lr, train_loss, train_acc, test_loss,
    test_acc, alpha, psi, epoch_time_s, images_per_s, skipped_steps, steps``,
    ``search_curve`` (the ``[alpha, loss]`` pairs of the epoch's search, or
    None) and ``epoch_cpu_s`` (this process's CPU time over the same span).
    ``epoch_time_s`` is the wall time of the training pass only (search
    included, evaluation excluded; on CUDA, synchronised at both ends);
    ``images_per_s`` the training images over it. ``alpha`` is None for SGD;
    ``psi`` is the angle (radians) of the epoch's last step. ``skipped_steps`` counts the
    steps skipped so far for a non-finite gradient; ``steps`` the steps taken so far.
    """
    torch.manual_seed(seed)
    model = make_model(data, cfg)
    generator = torch.Generator().manual_seed(seed)
    opt, base = build_optimizer(method, model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=cfg.epochs)
    scaler = grad_scaler(torch.device(cfg.device), cfg.amp)
    search = searches(method, cfg)
    for epoch in range(1, cfg.epochs + 1):
        lr = base.param_groups[0]["lr"]
        n_searches = len(opt.search_history) if isinstance(opt, XSAM) else 0
        _sync(cfg)
        start, cpu_start = time.perf_counter(), time.process_time()
        train_loss, train_acc = train_epoch(
            model,
            opt,
            data.train,
            generator,
            cfg,
            search_first_batch=search,
            scaler=scaler,
            on_batch=on_batch,
        )
        _sync(cfg)
        epoch_time, epoch_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        test_loss, test_acc = evaluate(model, data.test, cfg)
        scheduler.step()
        alpha = psi = curve = None
        if isinstance(opt, XSAM):
            alpha = opt.alpha
            psi = opt.stats().get("psi")
            if len(opt.search_history) > n_searches:
                curve = [[float(a), float(v)] for a, v in opt.search_curve]
        yield dict(
            epoch=epoch,
            method=method,
            seed=seed,
            lr=lr,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            alpha=alpha,
            psi=_finite_or_none(psi),
            epoch_time_s=epoch_time,
            images_per_s=data.n_train / epoch_time,
            skipped_steps=skipped_steps(opt),
            steps=epoch * len(data.train),
            search_curve=curve,
            epoch_cpu_s=epoch_cpu,
        )


def warm_up(data: Dataset, cfg: TrainConfig, methods: list[str], batches: int = 2) -> None:
    """A few untimed steps of every method, so one-time costs (thread pools,
    backend set-up, allocator, cuDNN autotuning) are not charged to the first timed run."""
    x, y = next(iter(data.train.epoch(torch.Generator().manual_seed(0))))
    criterion = nn.CrossEntropyLoss()
    device = torch.device(cfg.device)
    for method in methods:
        model = make_model(data, cfg)
        opt, _ = build_optimizer(method, model, cfg)
        for i in range(batches):

            def loss_fn() -> Tensor:
                with autocast(device, cfg.amp):
                    return criterion(model(x).float(), y)

            def closure() -> Tensor:
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss

            if isinstance(opt, XSAM):
                opt.step(
                    closure, search_loss=loss_fn, update_alpha=searches(method, cfg) and i == 0
                )
            else:
                closure()
                opt.step()
    _sync(cfg)


def _sync(cfg: TrainConfig) -> None:
    if torch.device(cfg.device).type == "cuda":
        torch.cuda.synchronize()


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
