"""Strategies for the alpha search: which grid points to evaluate, in which order.

A strategy receives the grid (the authors' ``arange(0, alpha_max + 1e-5,
alpha_delta)``) and ``evaluate``, a callable that returns the losses at a batch
of alphas (forward passes only; one host synchronisation per call). It returns
the chosen alpha (:func:`~xsam_fast.coefficients.best_alpha`: the first with the
largest finite loss; None when no loss is finite) and the ``(alpha, loss)`` pairs
it evaluated, in grid order.

Strategies, by forward passes on the default 21-point grid (0..2 step 0.1):

* ``"grid"``: all 21; the authors' exact rule on any curve.
* ``"fibonacci"``: at most 7; the grid maximiser of a unimodal curve.
* ``"coarse"``: every 4th point (6), then a Fibonacci search between the
  neighbours of the best of them (at most 5 more); the grid maximiser whenever
  the coarse points rank the right bump first, so it tolerates several bumps
  better than ``"fibonacci"`` at about twice its cost.

:class:`ModelLoss` is the forward-only search loss of a model on one batch; the
optimizer can evaluate it at several alphas in one vectorised forward
(``XSAM(search_batch=K)``), which an opaque callable does not allow.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .coefficients import best_alpha

Evaluate = Callable[[Sequence[float]], list[float]]
Strategy = Callable[[Sequence[float], Evaluate], "tuple[float | None, list[tuple[float, float]]]"]


def grid_search(
    alphas: Sequence[float], evaluate: Evaluate
) -> tuple[float | None, list[tuple[float, float]]]:
    """The authors' exhaustive search: every grid point, first strict maximum wins."""
    losses = evaluate(alphas)
    return best_alpha(alphas, losses), list(zip(alphas, losses))


def fibonacci_search(
    alphas: Sequence[float], evaluate: Evaluate
) -> tuple[float | None, list[tuple[float, float]]]:
    """Fibonacci search of the grid's maximum, exact when the loss is unimodal in alpha.

    Brackets the maximiser with Fibonacci-spaced probes (indices past the grid
    count as -inf, which keeps unimodality), reusing one probe per shrink, then
    evaluates what is left of the bracket. About 7 of the 21 default grid
    points. On a curve with several local maxima it may return a local one:
    use ``"grid"`` there.
    """
    n = len(alphas)
    cache: dict[int, float] = {}

    def f(i: int) -> float:
        if i >= n:
            return float("-inf")
        if i not in cache:
            cache[i] = evaluate([alphas[i]])[0]
        return _rank(cache[i])

    _fibonacci_indices(n, f)
    order = sorted(cache)
    picked = [alphas[i] for i in order]
    losses = [cache[i] for i in order]
    return best_alpha(picked, losses), list(zip(picked, losses))


def _fibonacci_indices(n: int, f: Callable[[int], float], offset: int = 0) -> None:
    """Probe ``f`` at indices ``offset .. offset + n - 1`` until the unimodal maximum is bracketed
    and evaluated (``f`` caches; indices past the end must give -inf)."""
    fib = [1, 1]
    while fib[-1] < n + 1:
        fib.append(fib[-1] + fib[-2])
    k = len(fib) - 1
    lo, hi = -1, -1 + fib[k]  # exclusive bracket holding every index 0..n-1
    while k > 3:
        x1, x2 = lo + fib[k - 2], lo + fib[k - 1]
        if f(offset + x1) < f(offset + x2):
            lo = x1
        else:
            hi = x2
        k -= 1
    for i in range(max(lo + 1, 0), min(hi, n)):
        f(offset + i)


def coarse_search(
    alphas: Sequence[float], evaluate: Evaluate, stride: int = 4
) -> tuple[float | None, list[tuple[float, float]]]:
    """Coarse grid (every ``stride``-th point and the last one, in one ``evaluate`` call), then
    a Fibonacci search strictly between the neighbours of the best coarse point.

    Exact on unimodal curves; on a curve with several bumps it finds the global
    one when that bump holds the best coarse point. 11 of the 21 default points
    at most (6 coarse + 5).
    """
    n = len(alphas)
    if n <= stride + 1:
        return grid_search(alphas, evaluate)
    coarse = sorted(set(range(0, n, stride)) | {n - 1})
    cache = dict(zip(coarse, evaluate([alphas[i] for i in coarse])))
    b = coarse[max(range(len(coarse)), key=lambda j: (_rank(cache[coarse[j]]), -j))]  # 1st max
    j = coarse.index(b)
    lo = coarse[j - 1] if j > 0 else -1
    hi = coarse[j + 1] if j + 1 < len(coarse) else n

    def f(i: int) -> float:
        if i >= hi:
            return float("-inf")
        if i not in cache:
            cache[i] = evaluate([alphas[i]])[0]
        return _rank(cache[i])

    _fibonacci_indices(hi - lo - 1, f, offset=lo + 1)
    order = sorted(cache)
    picked = [alphas[i] for i in order]
    losses = [cache[i] for i in order]
    return best_alpha(picked, losses), list(zip(picked, losses))


def _rank(loss: float) -> float:
    """A loss as strategies compare it: a non-finite loss ranks below every finite one."""
    return loss if math.isfinite(loss) else float("-inf")


STRATEGIES: dict[str, Strategy] = {
    "grid": grid_search,
    "fibonacci": fibonacci_search,
    "coarse": coarse_search,
}


class ModelLoss:
    """The search loss ``criterion(model(inputs), targets)`` of one batch, forward only.

    Calling it with no arguments evaluates the model at its current parameters
    (what every search does). :meth:`batched` evaluates K parameter sets in one
    vectorised forward (``torch.func.functional_call`` under ``torch.func.vmap``);
    :class:`~xsam_fast.XSAM` uses it when built with ``search_batch > 1``.
    ``second_step(model=..., inputs=..., targets=..., criterion=...)`` builds one;
    with the closure API pass ``search_loss=ModelLoss(model, x, y, criterion)``.
    """

    def __init__(
        self, model: nn.Module, inputs: Any, targets: Any, criterion: Callable[[Any, Any], Tensor]
    ) -> None:
        self.model, self.inputs, self.targets, self.criterion = model, inputs, targets, criterion

    def __call__(self) -> Tensor:
        return self.criterion(self.model(self.inputs), self.targets)

    def batched(self, params: Mapping[str, Tensor]) -> Tensor:
        """Losses, shape (K,), at K parameter sets: ``params`` maps parameter names of
        :attr:`model` to tensors with a leading dimension K (names left out keep
        the model's value).

        BatchNorm layers use batch statistics (train mode) and their running
        statistics are left untouched, as in a sequential search with momentum 0.
        Dropout draws a different mask for each of the K sets.
        """
        from torch.func import functional_call, vmap

        def one(p: Mapping[str, Tensor]) -> Tensor:
            return self.criterion(
                functional_call(self.model, dict(p), (self.inputs,)), self.targets
            )

        with _no_running_stats(self.model):
            return vmap(one, randomness="different")(dict(params))


@contextlib.contextmanager
def _no_running_stats(model: nn.Module) -> Iterator[None]:
    """Detach BN running statistics inside the block (their in-place updates break vmap).

    In train mode a BN layer without running statistics normalises with the batch
    statistics, the same output as with running statistics and momentum 0; in
    eval mode the layers are left alone (the running statistics are only read).
    """
    saved = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_var = m.num_batches_tracked = None
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


# ------------------------------------------------------------------ the search of a step
def rho_max_of(group: dict[str, Any]) -> float:
    """A group's search radius: ``rho_max``, or ``2 * rho`` when unset."""
    return group["rho_max"] if group["rho_max"] is not None else 2 * group["rho"]


def run_search(
    opt: Any,
    plan: Any,
    loss_fn: Callable[[], Tensor],
    model: nn.Module | None,
) -> tuple[float | None, list[tuple[float, float]], list[Any], dict[str, Any]]:
    """Search alpha for the current step of ``opt`` (an :class:`~xsam_fast.XSAM`) with its
    strategy; returns ``(alpha or None, curve, points, record)``.

    ``alpha`` is None when no loss was finite. ``points`` are the saved ascent points, one
    packed list per bucket of ``plan``: the parameters are overwritten by the search points
    (each written by the backend's ``write_point``), so the ascent point is kept in a
    temporary copy (the only parameter-sized allocation of a step, and only of a step that
    searches). ``record`` is the :attr:`~xsam_fast.XSAM.search_history` entry. BatchNorm
    statistics of ``model`` (or of the search loss's model) are the caller's to freeze.
    """
    from . import coefficients
    from . import distributed as D
    from .backends.base import EPS, SUMS

    sc = opt._stepper.scalars.on(plan.devices[0])
    psi, norm_g, norm_d = coefficients.angle(sc[SUMS], sc[EPS])
    alphas = coefficients.alpha_grid(opt.alpha_max, opt.alpha_delta)
    grid = torch.tensor(alphas, dtype=torch.float64, device=sc.device)
    coeffs = [
        coefficients.interpolation_coefficients(
            rho_max_of(b.group), grid, psi, norm_g, norm_d, sc[EPS]
        ).to(b.device)
        for b in plan.buckets
    ]
    points = [
        b.kernels.pack([p.detach().clone() for p in b.locals], like=b.params) for b in plan.buckets
    ]
    index = {a: k for k, a in enumerate(alphas)}
    names = _batch_names(opt.search_batch, plan, loss_fn)
    forwards = [0]
    fsdp = D.fsdp_modules(model if model is not None else getattr(loss_fn, "model", None))
    if not fsdp and plan.sharded:
        raise ValueError(
            "searching alpha with FSDP2 (sharded) parameters needs the model, "
            "to reshard it after each search forward: XSAM(model=...), "
            "second_step(model=...) or search_loss=ModelLoss(model, ...)"
        )

    def evaluate(batch: Sequence[float]) -> list[float]:
        losses = []
        if names is not None:  # search_batch points per vectorised forward
            for start in range(0, len(batch), opt.search_batch):
                chunk = [index[a] for a in batch[start : start + opt.search_batch]]
                stacked = {
                    names[id(p)]: _stacked_points(p, x, b0, g, co[chunk], b.eta)
                    for b, pts, co in zip(plan.buckets, points, coeffs)
                    for p, x, b0, g in zip(b.locals, pts, b.backups, b.grads)
                }
                out = _loss_value(loss_fn.batched, stacked, expected=len(chunk))
                losses.extend(out.reshape(-1).unbind(0))
                forwards[0] += 1
        else:
            for a in batch:
                for b, pts, co in zip(plan.buckets, points, coeffs):
                    with b.guard():
                        b.kernels.write_point(
                            b.params, pts, b.backups, b.grads, co[index[a]], eta=b.eta
                        )
                losses.append(_loss_value(loss_fn).reshape(()).to(sc.device))
                D.reshard(fsdp)
                forwards[0] += 1
        # averaged over the data-parallel group (one all-reduce per call of the strategy),
        # then one host synchronisation per batch
        return opt._comm.mean(torch.stack(losses)).tolist()

    start_time = time.perf_counter()
    alpha, curve = STRATEGIES[opt.search](alphas, evaluate)
    psi_f, norm_g_f, norm_d_f = torch.stack([psi, norm_g, norm_d]).tolist()
    record = dict(
        step=opt.step_count,
        alpha=opt.alpha if alpha is None else alpha,
        curve=curve,
        strategy=opt.search,
        evaluations=len(curve),
        forwards=forwards[0],
        time_s=time.perf_counter() - start_time,
        psi=psi_f,
        grad_norm=norm_g_f,
        d_norm=norm_d_f,
    )
    return alpha, curve, points, record


def _loss_value(loss_fn: Callable[..., Any], *args: Any, expected: int = 1) -> Tensor:
    """``loss_fn(*args)`` checked to be ``expected`` loss values (a scalar, or one per
    point of a batched call), detached. Raises TypeError or ValueError saying what a
    search loss must be."""
    try:
        out = loss_fn(*args)
    except RuntimeError as exc:
        if "does not require grad" not in str(exc):
            raise
        raise RuntimeError(
            "XSAM: search_loss called backward(); it is evaluated forward only (under "
            "torch.no_grad()) at each search point: pass a function that returns the loss, "
            "not the training closure"
        ) from exc
    if not isinstance(out, Tensor):
        raise TypeError(
            f"XSAM: search_loss must return the loss as a tensor, got {type(out).__name__}"
        )
    if out.numel() != expected:
        what = "a scalar loss" if expected == 1 else f"{expected} losses (one per point)"
        raise ValueError(
            f"XSAM: search_loss must return {what}, got shape {tuple(out.shape)}: reduce "
            "it as the training loss is (e.g. reduction='mean')"
        )
    return out.detach()


def _batch_names(
    search_batch: int, plan: Any, loss_fn: Callable[[], Tensor]
) -> dict[int, str] | None:
    """Parameter names for a batched search, or None for the sequential one (search_batch 1,
    a search loss that is not a :class:`ModelLoss`, or parameters outside its model)."""
    if search_batch == 1 or not isinstance(loss_fn, ModelLoss):
        return None
    names = {id(p): n for n, p in loss_fn.model.named_parameters()}
    if any(id(p) not in names for b in plan.buckets for p in b.locals):
        return None
    return names


def _stacked_points(
    p: Tensor, point: Tensor, backup: Tensor, grad: Tensor, coeffs: Tensor, eta: float | None
) -> Tensor:
    """The K search points of one parameter, stacked (K, *p.shape); ``coeffs`` is (K, 2).
    The reference backend's ``write_point`` arithmetic, broadcast over K."""
    from .backends.reference import search_point

    shape = (-1,) + (1,) * p.dim()
    return search_point(
        point, backup, grad, coeffs[:, 0].reshape(shape), coeffs[:, 1].reshape(shape), eta
    ).to(p.dtype)


def search_step(
    opt: Any, plan: Any, loss_fn: Callable[[], Tensor], model: nn.Module | None
) -> list[Any] | None:
    """The search of one step of ``opt``: run it (BatchNorm statistics frozen), set alpha,
    record it, call the search hooks. Returns the saved ascent points for the update, or
    None when the step's sums are not finite (then nothing is searched)."""
    import warnings

    from .backends.base import SUMS
    from .batchnorm import frozen_running_stats

    if not bool(torch.isfinite(opt._stepper.scalars.on(plan.devices[0])[SUMS]).all()):
        warnings.warn(
            "XSAM: non-finite gradient or displacement: no search in this step",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    bn = model if model is not None else (getattr(loss_fn, "model", None) or opt._bn_modules())
    with frozen_running_stats(bn):
        alpha, curve, points, record = run_search(opt, plan, loss_fn, model)
    if alpha is None:
        warnings.warn(
            f"XSAM: no finite loss at the {len(curve)} search points; alpha kept at {opt.alpha}",
            RuntimeWarning,
            stacklevel=4,
        )
    else:
        opt.alpha = alpha
    opt.search_curve = curve
    opt.search_history.append(record)
    opt._search_requested = False
    for hook in list(opt._search_hooks.values()):
        hook(opt, dict(record))
    opt._report_skips()
    return points


def search_state(opt: Any) -> tuple:
    """What a search changes in ``opt``, to undo it (:func:`restore_search_state`)."""
    return opt.alpha, opt.search_curve, len(opt.search_history), opt._search_requested


def restore_search_state(opt: Any, state: tuple) -> None:
    """Undo what an aborted step's search changed: a step is all or nothing."""
    opt.alpha, opt.search_curve, n, opt._search_requested = state
    del opt.search_history[n:]
