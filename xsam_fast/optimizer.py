"""``XSAM``: eXplicit Sharpness-Aware Minimization as a ``torch.optim.Optimizer``.

The optimizer orchestrates a step (which tensors, which scalars, which phase);
the elementwise passes run in a backend (``xsam_fast.backends``), the scalar
math lives in ``xsam_fast.coefficients``.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import coefficients as C
from .backends import get_backend, validate_backend_name
from .backends.base import Backend
from .base_update import FUSED_UPDATES, fused_kind
from .amp import ScaledStep, scaler_enabled
from .batchnorm import frozen_running_stats
from . import distributed as D
from .distributed import Communicator, local
from .search import STRATEGIES, ModelLoss

NonFinite = Literal["warn", "raise", "none"]
LossFn = Callable[[], Tensor]


@dataclass
class _Bucket:
    """Tensors of one param group on one device with one dtype, handled by one backend."""

    group: dict[str, Any]
    backend: Backend
    owners: list[Tensor]  # the parameters as the model holds them (DTensors under FSDP2)
    params: list[Tensor]  # their local tensors, which the backends read and write
    grads: list[Tensor]
    backups: list[Tensor]
    shards: tuple = ()  # FSDP2: the groups the local shards' partial sums are all-reduced over
    eta: float | None = None  # adaptive (ASAM) tensors: T = |theta_0| + eta; None: T = 1


class XSAM(torch.optim.Optimizer):
    r"""eXplicit Sharpness-Aware Minimization wrapped around a base optimizer.

    One step: back up :math:`\theta_0`; ``steps`` ascents of length
    ``rho/steps`` along the normalised gradient; one more gradient :math:`g` at
    the ascent point; then the base optimizer steps from :math:`\theta_0` with
    :math:`G = \|g\|\, v(\alpha)`, where :math:`v(\alpha)` interpolates on the
    great circle between the ascent direction (alpha=0) and :math:`g`
    (alpha=1, SAM). ``alpha`` is fixed or found by a search over
    ``0, alpha_delta, ..., alpha_max`` that maximises the loss at distance
    ``rho_max`` (see ``XSAM_MATH.md``).

    Args:
        params: parameters or param groups (groups may set ``rho`` and ``rho_max``).
        base_optimizer: class of the base optimizer, built on the same param groups.
        rho: TOTAL ascent length (each of the ``steps`` ascents moves ``rho/steps``).
        steps: number of ascent steps k >= 1.
        rho_max: search radius; ``None`` means ``2 * rho``.
        alpha: interpolation parameter used until a search changes it.
        alpha_max, alpha_delta: the search grid ``arange(0, alpha_max + 1e-5, alpha_delta)``.
        eps: added to every norm before dividing.
        backend: ``"auto"`` or a name from :func:`xsam_fast.available_backends`.
        nonfinite: on a non-finite gradient norm, ``"warn"`` restores theta_0 and
            skips the step with a warning, ``"raise"`` restores and raises
            ``FloatingPointError``; both read one flag on the host per pass.
            ``"none"`` checks nothing (no host synchronisation at all; NaN
            propagates as with plain torch optimizers).
        model: the model, for BatchNorm handling in :meth:`step` and the search.
        search_interval: with :meth:`step`, search alpha every this many steps
            (``None``: only when asked with ``update_alpha=True``).
        search: search strategy, a key of :data:`xsam_fast.search.STRATEGIES`
            (``"grid"``: the authors' exhaustive grid; ``"fibonacci"``, ``"coarse"``:
            fewer forward passes, see :mod:`xsam_fast.search`).
        search_batch: evaluate this many grid points per forward pass (``torch.func.vmap``
            over stacked candidate parameters; K times the parameter memory). Needs a
            :class:`~xsam_fast.search.ModelLoss` search loss (``second_step``'s
            model/inputs/targets/criterion build one); with any other ``search_loss``
            callable the search runs one point per forward, as with 1.
        interval: :meth:`step` runs the full XSAM step every ``interval``-th call
            and a plain base-optimizer step (one forward/backward) in between.
        max_grad_norm: clip the interpolated gradient G to this global L2 norm
            before the base step (as ``clip_grad_norm_``: factor
            ``min(1, max_grad_norm / (||G|| + 1e-6))``). ``||G||`` follows from the
            three sums of the step, so clipping costs no extra pass.
        fuse_base_update: fuse SGD/Adam/AdamW into the interpolation pass (default);
            ``False`` always writes G into ``.grad`` and calls the base ``step()``.
        process_group: the data-parallel ``torch.distributed`` group: search losses are
            averaged over it (DDP, FSDP2, HSDP); the partial sums of sharded (DTensor)
            parameters are summed over their own shard groups, which must lie within
            it. ``None``: the default group when torch.distributed is initialised,
            else no communication. See
            :mod:`xsam_fast.distributed` and ``docs/distributed_amp.md``.
        adaptive: ASAM's adaptive geometry (Kwon et al., 2021), see below.
        eta: ASAM's offset in ``T = |theta_0| + eta``; must be > 0 (T must be invertible
            where a weight is 0).
        adaptive_weights_only: with ``adaptive``, rescale only tensors with ``ndim > 1``
            (weights, as ASAM does); biases and norm parameters keep ``T = 1``.
            ``False`` rescales every tensor.
        **base_kwargs: hyper-parameters of the base optimizer (``lr``, ``momentum``...).

    Adaptive (ASAM) XSAM, ``adaptive=True``: the whole step runs in the rescaled
    space :math:`u = T^{-1} w`, :math:`T = \mathrm{diag}(|\theta_0| + \eta)` (fixed
    from :math:`\theta_0` for the step; :math:`T = 1` on non-adaptive tensors), where
    the gradient is :math:`g_u = T g` and the displacement :math:`d_u = T^{-1} d`,
    :math:`d = \vartheta - \theta_0`. Exactly:

    * ascent (each of the ``steps``, :math:`r = \rho/k`):
      :math:`\theta \leftarrow \theta + r\, T^2 g / (\|T g\| + \epsilon)`
      (for ``steps=1`` ASAM's :math:`\rho\, T^2 g / \|T g\|`), norms global over all tensors;
    * :math:`\|g_u\|^2 = \sum T^2 g^2`, :math:`\|d_u\|^2 = \sum d^2/T^2`,
      :math:`\langle d_u, g_u\rangle = \sum d\, g` give :math:`\psi` and
      :math:`(c_d, c_g)` as in plain XSAM (scale :math:`\|g_u\|` for the update,
      ``rho_max`` for search points);
    * search point :math:`\theta_0 + c_d d + c_g T^2 g = \theta_0 + T \rho_{max} v_u(\alpha)`;
    * gradient handed to the base optimizer
      :math:`G = c_d\, d / T^2 + c_g\, g = T^{-1} \|g_u\| v_u(\alpha)`
      (alpha=1: :math:`\approx g`, ASAM's update; alpha=0: the ascent direction).

    With :math:`T = 1` this is plain XSAM, bit for bit. :attr:`last_stats` then reports
    :math:`\psi`, :math:`\|g_u\|`, :math:`\|d_u\|`, and ``max_grad_norm`` clips by
    :math:`\|G_u\| = \|T G\|` (the norm the three sums give). Example::

        opt = XSAM(model.parameters(), torch.optim.SGD, rho=1.0, adaptive=True, eta=0.01,
                   lr=0.1, momentum=0.9)   # ASAM uses a larger rho (0.5-2) than SAM

    After each step, :attr:`last_stats` holds ``alpha`` and the 0-d tensors
    ``psi``, ``grad_norm`` and ``d_norm`` (read them with :meth:`stats`), and
    :attr:`search_curve` the ``(alpha, loss)`` pairs of the last search.
    :attr:`search_history` keeps one record per search (see
    :meth:`register_search_hook`, which also reports them as they happen);
    :meth:`request_search` asks for a search at the next step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.15,
        steps: int = 1,
        rho_max: float | None = None,
        alpha: float = 1.0,
        alpha_max: float = 2.0,
        alpha_delta: float = 0.1,
        eps: float = 1e-12,
        backend: str = "auto",
        nonfinite: NonFinite = "warn",
        model: nn.Module | None = None,
        search_interval: int | None = None,
        search: str = "grid",
        search_batch: int = 1,
        interval: int = 1,
        max_grad_norm: float | None = None,
        fuse_base_update: bool = True,
        process_group: Any = None,
        adaptive: bool = False,
        eta: float = 0.01,
        adaptive_weights_only: bool = True,
        **base_kwargs: Any,
    ) -> None:
        _check_nonnegative("rho", rho)
        if rho_max is not None:
            _check_nonnegative("rho_max", rho_max)
        _check_nonnegative("eps", eps)
        _check_nonnegative("alpha_max", alpha_max)
        _check_nonnegative("eta", eta)
        if adaptive and eta == 0:
            raise ValueError("adaptive=True needs eta > 0: T = |theta_0| + eta must not vanish "
                             "where a weight is 0 (the step divides by T^2)")
        _check_finite("alpha", alpha)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not (alpha_delta > 0 and math.isfinite(alpha_delta)):
            raise ValueError(f"alpha_delta must be a finite number > 0, got {alpha_delta!r}")
        if nonfinite not in ("warn", "raise", "none"):
            raise ValueError(f"nonfinite must be 'warn', 'raise' or 'none', got {nonfinite!r}")
        if search_interval is not None and (not isinstance(search_interval, int) or search_interval < 1):
            raise ValueError(f"search_interval must be None or an integer >= 1, got {search_interval!r}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        validate_backend_name(backend)
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval!r}")
        if max_grad_norm is not None:
            _check_nonnegative("max_grad_norm", max_grad_norm)
        if search not in STRATEGIES:
            raise ValueError(f"unknown search {search!r}; valid: {', '.join(STRATEGIES)}")
        if not isinstance(search_batch, int) or isinstance(search_batch, bool) or search_batch < 1:
            raise ValueError(f"search_batch must be an integer >= 1, got {search_batch!r}")

        super().__init__(params, dict(rho=rho, rho_max=rho_max))
        for group in self.param_groups:
            _check_group(group)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

        self.steps = steps
        self.alpha = float(alpha)
        self.alpha_max = alpha_max
        self.alpha_delta = alpha_delta
        self.eps = eps
        self.backend = backend
        self.nonfinite = nonfinite
        self.model = model
        self.search_interval = search_interval
        self.search = search
        self.search_batch = search_batch
        self.interval = interval
        self.max_grad_norm = max_grad_norm
        self.fuse_base_update = fuse_base_update
        self.adaptive = bool(adaptive)
        self.eta = float(eta)
        self.adaptive_weights_only = bool(adaptive_weights_only)
        self._comm = Communicator(process_group)
        self._amp: ScaledStep | None = None  # GradScaler bookkeeping of the current step

        self.step_count = 0  # completed XSAM steps
        self.base_steps = 0  # plain base-optimizer steps taken by step() between them (interval > 1)
        self.last_stats: dict[str, Any] = {}
        self.search_curve: list[tuple[float, float]] = []
        self.search_history: list[dict[str, Any]] = []
        self._backed_up: list[Tensor] = []  # params whose theta_0 is held for the current step
        self._skip = False  # the current step met a non-finite gradient
        self._search_requested = False  # request_search(): the next XSAM step searches
        self._search_hooks: dict[int, Callable[..., None]] = OrderedDict()  # weakref-able

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # during construction, before the base optimizer exists
            super().add_param_group(param_group)
            return
        # a group added later gets XSAM's defaults here and the base optimizer's there
        for key in ("rho", "rho_max"):
            param_group.setdefault(key, self.defaults[key])
        _check_group(param_group)
        base.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    # ------------------------------------------------------------- the phases
    @torch.no_grad()
    def backup_param(self) -> None:
        """Store theta_0 for every trainable parameter (optional: :meth:`first_step` does it)."""
        self._backed_up = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        for p in self._backed_up:
            self._backup_of(p).copy_(local(p))

    @torch.no_grad()
    def restore_param(self) -> None:
        """Put back theta_0 in every parameter moved since the last backup."""
        for p in self._backed_up:
            local(p).copy_(self.state[p]["theta0"])

    @torch.no_grad()
    def first_step(self, step: int = 0, *, scaler: Any = None) -> None:
        """One ascent of length ``rho/steps`` from the current point along ``p.grad``.

        Backs up theta_0 first if :meth:`backup_param` was not called this step.
        ``step`` is accepted for the authors' call sequence and otherwise unused.
        ``scaler``: the ``torch.amp.GradScaler`` that scaled this backward pass (pass it
        to every :meth:`first_step` and :meth:`second_step` of the step): the gradients
        are unscaled in place first, and an inf/NaN skips the step (see :mod:`xsam_fast.amp`).
        """
        if self._skip:
            return
        buckets = self._buckets()
        self._unscale(buckets, scaler, first=True)
        backup = not self._backed_up
        # ||g_u||^2; T comes from theta_0: the params themselves when they are backed up
        # in this very pass, the backups afterwards
        sumsq = self._total(buckets, [b.backend.sumsq(b.grads, weights=b.params if backup
                                                      else b.backups, eta=b.eta)
                                      for b in buckets], ())
        if self._nonfinite(sumsq, "gradient"):
            self._skip = True
            return
        if backup:
            self._backed_up = [p for b in buckets for p in b.owners]
        for b in buckets:
            radius = b.group["rho"] / self.steps
            scale = C.ascent_scale(sumsq.to(_acc(b)), radius, self.eps)
            b.backend.backup_ascent(b.params, b.grads, b.backups, scale, backup, eta=b.eta)

    @torch.no_grad()
    def second_step(
        self,
        update_alpha: bool = False,
        model: nn.Module | None = None,
        inputs: Any = None,
        targets: Any = None,
        criterion: Callable[[Any, Any], Tensor] | None = None,
        *,
        search_loss: LossFn | None = None,
        scaler: Any = None,
    ) -> Tensor | None:
        """Interpolate, optionally search alpha, restore theta_0 and step the base optimizer.

        Call after the backward pass at the final ascent point. With
        ``update_alpha=True`` the search evaluates ``criterion(model(inputs), targets)``
        (the authors' signature) or ``search_loss()`` at each grid point, forward only.
        A pending :meth:`request_search` makes this step search whatever ``update_alpha`` says.
        ``scaler``: as in :meth:`first_step`; the ``scaler.update()`` that follows sees
        this step's overflow flag, as after ``scaler.step(optimizer)``.
        Returns ``||g||`` (the authors' ``scale``), or None if the step was skipped.
        """
        try:
            if self._skip:
                self._finish_skipped()
                return None
            if not self._backed_up:
                raise RuntimeError("second_step() called without first_step() in this step")
            buckets = self._buckets()
            self._unscale(buckets, scaler, first=False)
            self._backup_late_params(buckets)
            self._restore_gradless(buckets)
            sums = self._final_sums(buckets)
            if self._nonfinite(sums, "gradient or ascent displacement"):
                self._finish_skipped()
                return None
            psi, norm_g, norm_d = C.angle(sums, self.eps)
            points = [b.params for b in buckets]
            if update_alpha or self._search_requested:
                model = model if model is not None else self.model
                if search_loss is None:
                    if model is None or criterion is None:
                        raise ValueError("update_alpha=True needs model, inputs, targets and "
                                         "criterion, or search_loss (request_search() too)")
                    search_loss = ModelLoss(model, inputs, targets, criterion)
                points = self._search(buckets, psi, norm_g, norm_d, search_loss, model)
            self._update(buckets, points, sums, psi, norm_g, norm_d)
        except BaseException:
            self.restore_param()
            self._end_step()
            raise
        self.last_stats = dict(alpha=self.alpha, psi=psi, grad_norm=norm_g, d_norm=norm_d,
                               skipped=False)
        self.step_count += 1
        self._opt_called = True  # type: ignore[attr-defined]  (LR schedulers check it)
        self._end_step()
        return norm_g

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        search_loss: LossFn | None = None,
        update_alpha: bool | None = None,
        scaler: Any = None,
    ) -> Tensor:
        """A whole XSAM step: ``steps + 1`` calls of ``closure``, then the update.

        ``closure`` follows torch's convention (zero grads, forward, backward,
        return the loss). ``search_loss`` is a forward-only callable returning the
        loss at the current parameters; it is called at each grid point when a
        search runs: every ``search_interval`` steps, or now with
        ``update_alpha=True``. Returns the loss of the first pass. If anything
        raises inside the step, the parameters are left at theta_0.

        fp16 with ``torch.amp.GradScaler``: the closure calls
        ``scaler.scale(loss).backward()``; pass ``scaler=scaler`` here and call
        ``scaler.update()`` after the step (instead of ``scaler.step``). Norms, ascent
        and interpolation use unscaled gradients; an inf/NaN in any pass skips the step
        with theta_0 restored, and ``scaler.update()`` backs the scale off.
        """
        if closure is None:
            raise ValueError(
                "XSAM.step needs a closure (zero_grad, forward, backward, return loss); or call "
                "first_step() and second_step() yourself after each backward pass")
        if (self.step_count + self.base_steps) % self.interval != 0:
            return self._plain_step(closure, scaler)
        if update_alpha is None:
            update_alpha = (self.search_interval is not None and search_loss is not None
                            and self.step_count % self.search_interval == 0)
        if update_alpha and search_loss is None:
            raise ValueError("update_alpha=True needs search_loss, a forward-only loss callable")
        if self._search_requested and search_loss is None:
            raise ValueError("request_search() is pending: this step needs search_loss, a "
                             "forward-only loss callable")
        try:
            with torch.enable_grad():
                loss = closure()
            with frozen_running_stats(self.model):
                self.first_step(0, scaler=scaler)
                for i in range(1, self.steps):
                    with torch.enable_grad():
                        closure()
                    self.first_step(i, scaler=scaler)
                with torch.enable_grad():
                    closure()
                self.second_step(update_alpha=update_alpha, model=self.model,
                                 search_loss=search_loss, scaler=scaler)
        except BaseException:
            self.restore_param()
            self._end_step()
            raise
        return loss

    def _plain_step(self, closure: Callable[[], Tensor], scaler: Any = None) -> Tensor:
        """One forward/backward and a plain base-optimizer step (``interval > 1``)."""
        with torch.enable_grad():
            loss = closure()
        if scaler_enabled(scaler):
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self.base_steps += 1
        self._opt_called = True  # type: ignore[attr-defined]
        return loss

    # ------------------------------------------------------------ internals
    def _eta_of(self, p: Tensor) -> float | None:
        """``eta`` for a tensor stepped in ASAM's geometry, None for one with ``T = 1``."""
        if self.adaptive and (not self.adaptive_weights_only or p.dim() > 1):
            return self.eta
        return None

    def _backup_of(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "theta0" not in state:
            state["theta0"] = torch.empty_like(local(p))
        return state["theta0"]

    def _buckets(self) -> list[_Bucket]:
        buckets: dict[tuple[int, torch.device, torch.dtype, bool, tuple, float | None],
                      _Bucket] = {}
        for gi, group in enumerate(self.param_groups):
            for owner in group["params"]:
                if owner.grad is None:
                    continue
                p, g = local(owner), local(owner.grad)  # DTensors: their local shards
                if g.is_sparse:
                    raise RuntimeError("XSAM does not support sparse gradients; use a dense "
                                       "embedding (sparse=False) for the parameters it steps")
                dense = p.is_contiguous() and g.is_contiguous()
                shards = self._comm.shard_groups(owner)
                eta = self._eta_of(owner)
                key = (gi, p.device, p.dtype, dense, shards, eta)
                bucket = buckets.get(key)
                if bucket is None:
                    name = self.backend if dense else "reference"
                    bucket = buckets[key] = _Bucket(group, get_backend(name, p.device, p.dtype),
                                                    [], [], [], [], shards, eta)
                bucket.owners.append(owner)
                bucket.params.append(p)
                bucket.grads.append(g)
                bucket.backups.append(self._backup_of(owner))
        return list(buckets.values())

    def _backup_late_params(self, buckets: list[_Bucket]) -> None:
        """Back up params that got a gradient only after the ascent: they never moved."""
        held = {id(p) for p in self._backed_up}
        for b in buckets:
            for owner, p, backup in zip(b.owners, b.params, b.backups):
                if id(owner) not in held:
                    backup.copy_(p)
                    self._backed_up.append(owner)

    def _restore_gradless(self, buckets: list[_Bucket]) -> None:
        """Put back theta_0 in params that moved in the ascent but have no final gradient.

        They take no part in the update (as with the authors' restore-then-step), so
        they must end the step, and stay during a search, where they started.
        """
        stepped = {id(p) for b in buckets for p in b.owners}
        for p in self._backed_up:
            if id(p) not in stepped:
                local(p).copy_(self.state[p]["theta0"])

    def _final_sums(self, buckets: list[_Bucket]) -> Tensor:
        parts = [b.backend.final_sums(b.params, b.backups, b.grads, eta=b.eta) for b in buckets]
        return self._total(buckets, parts, (3,))

    def _total(self, buckets: list[_Bucket], parts: list[Tensor], shape: tuple[int, ...]) -> Tensor:
        """Sum of per-bucket partial sums; those of sharded (FSDP2) buckets are summed over
        their shard groups too (one all-reduce per group and call). Replicated (DDP)
        parameters are never reduced again."""
        by_groups: dict[tuple, list[Tensor]] = {}
        for b, x in zip(buckets, parts):
            by_groups.setdefault(b.shards, []).append(x)
        totals = [_combine(xs) if not groups else self._comm.sum(_combine(xs), groups)
                  for groups, xs in by_groups.items()]
        return _combine(totals) if totals else torch.zeros(shape, dtype=torch.float32)

    def _unscale(self, buckets: list[_Bucket], scaler: Any, first: bool) -> None:
        """With an enabled GradScaler: unscale this pass's gradients in place."""
        enabled = scaler_enabled(scaler)
        if self._amp is None and enabled and first:
            self._amp = ScaledStep(scaler)
        if enabled != (self._amp is not None) or (enabled and scaler is not self._amp.scaler):
            raise ValueError("pass the same enabled GradScaler (scaler=...) to every first_step() "
                             "and second_step() of a step, or to none of them")
        if self._amp is not None:
            self._amp.unscale_([g for b in buckets for g in b.grads])

    def _nonfinite(self, sums: Tensor, what: str) -> bool:
        """Whether the step must be skipped: with a GradScaler, silently on overflow (the
        scaler learns it); otherwise as ``nonfinite`` says (one host read unless "none")."""
        if self._amp is not None:
            return self._amp.overflow(sums)
        if self.nonfinite != "none" and not bool(torch.isfinite(sums).all()):
            self._report_nonfinite(what)
            return True
        return False

    def _search(self, buckets: list[_Bucket], psi: Tensor, norm_g: Tensor, norm_d: Tensor,
                loss_fn: LossFn, model: nn.Module | None) -> list[list[Tensor]]:
        """Search alpha with :attr:`search`; returns the saved ascent points.

        The parameters are overwritten by the search points, so the ascent point
        is kept in a temporary copy (the only parameter-sized allocation of a
        step, and only of a step that searches).
        """
        alphas = C.alpha_grid(self.alpha_max, self.alpha_delta)
        grid = torch.tensor(alphas, dtype=psi.dtype, device=psi.device)
        coeffs = [C.interpolation_coefficients(_rho_max(b.group), grid, psi, norm_g, norm_d,
                                               self.eps).to(_acc(b)) for b in buckets]
        points = [[p.detach().clone() for p in b.params] for b in buckets]
        index = {a: k for k, a in enumerate(alphas)}
        names = self._batch_names(buckets, loss_fn)
        forwards = [0]
        # FSDP2: the root keeps stale gathered weights after a forward-only pass
        fsdp = D.fsdp_modules(model if model is not None else getattr(loss_fn, "model", None))
        if not fsdp and any(b.shards for b in buckets):
            raise ValueError("searching alpha with FSDP2 (sharded) parameters needs the model, "
                             "to reshard it after each search forward: XSAM(model=...), "
                             "second_step(model=...) or search_loss=ModelLoss(model, ...)")

        def evaluate(batch: Sequence[float]) -> list[float]:
            losses = []
            if names is not None:  # search_batch points per vectorised forward
                for start in range(0, len(batch), self.search_batch):
                    chunk = [index[a] for a in batch[start:start + self.search_batch]]
                    stacked = {names[id(p)]: _stacked_points(p, x, b0, g, co[chunk], b.eta)
                               for b, pts, co in zip(buckets, points, coeffs)
                               for p, x, b0, g in zip(b.params, pts, b.backups, b.grads)}
                    losses.extend(loss_fn.batched(stacked).detach().reshape(-1).unbind(0))
                    forwards[0] += 1
            else:
                for a in batch:
                    for b, pts, co in zip(buckets, points, coeffs):
                        b.backend.write_point(b.params, pts, b.backups, b.grads, co[index[a]],
                                              eta=b.eta)
                    losses.append(loss_fn().detach().reshape(()))
                    D.reshard(fsdp)
                    forwards[0] += 1
            # averaged over the data-parallel group (one all-reduce per call of the strategy),
            # then one host synchronisation per batch
            return self._comm.mean(torch.stack(losses)).tolist()

        start_time = time.perf_counter()
        with frozen_running_stats(model):
            self.alpha, self.search_curve = STRATEGIES[self.search](alphas, evaluate)
        record = dict(step=self.step_count, alpha=self.alpha, curve=self.search_curve,
                      strategy=self.search, evaluations=len(self.search_curve),
                      forwards=forwards[0], time_s=time.perf_counter() - start_time,
                      psi=float(psi), grad_norm=float(norm_g), d_norm=float(norm_d))
        self.search_history.append(record)
        self._search_requested = False
        for hook in list(self._search_hooks.values()):
            hook(self, dict(record))
        return points

    def _batch_names(self, buckets: list[_Bucket], loss_fn: LossFn) -> dict[int, str] | None:
        """Parameter names for a batched search, or None for the sequential one (search_batch 1,
        a search loss that is not a :class:`ModelLoss`, or parameters outside its model)."""
        if self.search_batch == 1 or not isinstance(loss_fn, ModelLoss):
            return None
        names = {id(p): n for n, p in loss_fn.model.named_parameters()}
        if any(id(p) not in names for b in buckets for p in b.params):
            return None
        return names

    def _update(self, buckets: list[_Bucket], points: list[list[Tensor]], sums: Tensor,
                psi: Tensor, norm_g: Tensor, norm_d: Tensor) -> None:
        coeffs = C.interpolation_coefficients(norm_g, self.alpha, psi, norm_g, norm_d, self.eps)
        if self.max_grad_norm is not None:
            coeffs = coeffs * C.clip_factor(coeffs, sums, self.max_grad_norm)
        kinds = [fused_kind(self.base_optimizer, g) for g in self.param_groups]
        # DTensor (FSDP2) parameters step through the base optimizer, which keys its state
        # by the parameters and keeps it as DTensors
        fused = (self.fuse_base_update and all(k is not None for k in kinds)
                 and not any(D.is_dtensor(p) for b in buckets for p in b.owners))
        for b, pts in zip(buckets, points):
            co = coeffs.to(_acc(b))
            if fused:
                kind = fused_kind(self.base_optimizer, b.group)
                FUSED_UPDATES[kind](b.backend, self.base_optimizer, b.group, b.params, pts,
                                    b.backups, b.grads, co, eta=b.eta)
            else:
                b.backend.write_grad_restore(b.params, pts, b.backups, b.grads, co, eta=b.eta)
        if fused:
            self.base_optimizer._opt_called = True  # type: ignore[attr-defined]
        else:
            self.base_optimizer.step()

    def _report_nonfinite(self, what: str) -> None:
        message = f"XSAM: non-finite {what} norm; theta_0 restored and this step skipped"
        if self.nonfinite == "raise":
            self.restore_param()
            self._end_step()
            raise FloatingPointError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _finish_skipped(self) -> None:
        self.restore_param()
        self.last_stats = dict(alpha=self.alpha, skipped=True)
        self._end_step()

    def _end_step(self) -> None:
        if self._amp is not None:  # tell the GradScaler what scaler.step would have
            self._amp.record(self)
            self._amp = None
        self._backed_up = []
        self._skip = False

    # ------------------------------------------------------------ searching
    def request_search(self) -> None:
        """Make the next XSAM step search alpha (on demand; consumed by that search).

        It then searches whatever ``update_alpha`` says; with :meth:`step` it needs a
        ``search_loss``. Once per epoch: call this before the epoch's first step, or
        pass ``update_alpha=(batch_idx == 0)``.
        """
        self._search_requested = True

    def register_search_hook(self, hook: Callable[["XSAM", dict[str, Any]], None]
                             ) -> RemovableHandle:
        """Call ``hook(optimizer, record)`` after every search; returns a handle with ``remove()``.

        ``record`` is a copy of the :attr:`search_history` entry: ``step``, ``alpha``,
        ``curve`` (the evaluated ``(alpha, loss)`` pairs), ``strategy``,
        ``evaluations`` (grid points evaluated), ``forwards`` (forward passes run),
        ``time_s``, and the step's ``psi``, ``grad_norm``, ``d_norm`` as floats.
        :class:`xsam_fast.searchlog.SearchLogger` writes them to a JSON Lines file.
        """
        handle = RemovableHandle(self._search_hooks)
        self._search_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------ reporting
    def stats(self) -> dict[str, float]:
        """:attr:`last_stats` as Python floats (reads the device scalars: one sync)."""
        return {k: (float(v) if isinstance(v, Tensor) else v) for k, v in self.last_stats.items()}

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus an ``"xsam"`` entry (alpha, counters, searches).

        theta_0 is scratch within a step and is not saved.
        """
        sd = self.base_optimizer.state_dict()
        sd["xsam"] = dict(alpha=self.alpha, step_count=self.step_count, base_steps=self.base_steps,
                          search_curve=list(self.search_curve),
                          search_history=list(self.search_history))
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("xsam", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        if extra is not None:
            self.alpha = float(extra["alpha"])
            self.step_count = int(extra["step_count"])
            self.base_steps = int(extra.get("base_steps", 0))
            self.search_curve = [tuple(x) for x in extra["search_curve"]]
            self.search_history = list(extra["search_history"])


def _acc(bucket: _Bucket) -> torch.dtype:
    return C.accumulation_dtype(bucket.params[0].dtype)


def _stacked_points(p: Tensor, point: Tensor, backup: Tensor, grad: Tensor, coeffs: Tensor,
                    eta: float | None = None) -> Tensor:
    """The K search points ``theta_0 + (c_d (point - theta_0) + c_g g)`` of one parameter,
    stacked (K, *p.shape); ``coeffs`` is (K, 2). Same arithmetic as ``write_point`` (with
    ``eta``, ASAM's ``g`` becomes ``T*T * g``, ``T = |theta_0| + eta``)."""
    acc = coeffs.dtype
    shape = (-1,) + (1,) * p.dim()
    theta0 = backup.to(acc)
    g = grad.to(acc)
    if eta is not None:
        t = theta0.abs() + eta
        g = (t * t) * g
    direction = (coeffs[:, 0].reshape(shape) * (point.to(acc) - theta0)
                 + coeffs[:, 1].reshape(shape) * g)
    return (theta0 + direction).to(p.dtype)


def _combine(parts: list[Tensor]) -> Tensor:
    """Sum per-bucket partial sums in the widest dtype, on the first bucket's device."""
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
    device = parts[0].device
    total = parts[0].to(device=device, dtype=dtype)
    for p in parts[1:]:
        total = total + p.to(device=device, dtype=dtype)
    return total


def _rho_max(group: dict[str, Any]) -> float:
    return group["rho_max"] if group["rho_max"] is not None else 2 * group["rho"]


def _check_nonnegative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_group(group: dict[str, Any]) -> None:
    _check_nonnegative("rho", group["rho"])
    if group["rho_max"] is not None:
        _check_nonnegative("rho_max", group["rho_max"])

