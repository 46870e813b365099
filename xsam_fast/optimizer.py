"""``XSAM``: eXplicit Sharpness-Aware Minimization as a ``torch.optim.Optimizer``.

The public optimizer: its API and the order of a step's phases (the manual
API here; ``step(closure)`` in :mod:`xsam_fast.closure`; statistics and
checkpoints in :mod:`xsam_fast.reporting` and :mod:`xsam_fast.checkpoint`).
What a step does to the tensors is planned once in
:mod:`xsam_fast.plan`, run by :mod:`xsam_fast.stepper` through a backend
(:mod:`xsam_fast.backends`); the scalar math is defined in
:mod:`xsam_fast.coefficients`; the algorithm in ``docs/algorithm.md``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import hooks
from . import validation as V
from .amp import ScaledStep, unscale_pass
from .backends.base import FOUND_INF, NORM_G
from .checkpoint import CheckpointMixin
from .closure import ClosureMixin
from .distributed import Communicator
from .gradmark import GradMark
from .search import ModelLoss, restore_search_state, search_state, search_step
from .reporting import ReportingMixin
from .stepper import Stepper

NonFinite = Literal["warn", "raise", "none"]
LossFn = Callable[[], Tensor]


class XSAM(ClosureMixin, ReportingMixin, CheckpointMixin, torch.optim.Optimizer):
    r"""eXplicit Sharpness-Aware Minimization wrapped around a base optimizer.

    One step (``docs/algorithm.md``): back up :math:`\theta_0`; ``steps`` ascents of
    length ``rho/steps`` along the normalised gradient; one more gradient :math:`g` at
    the ascent point; then the base optimizer steps from :math:`\theta_0` with
    :math:`G = \|g\|\, v(\alpha)`, where :math:`v(\alpha)` interpolates on the great
    circle between the ascent direction (alpha=0) and :math:`g` (alpha=1, SAM).
    ``alpha`` is fixed or found by a search over ``0, alpha_delta, ..., alpha_max``
    that maximises the loss at distance ``rho_max``.

    Args:
        params: parameters or param groups (groups may set ``rho`` and ``rho_max``).
        base_optimizer: class of the base optimizer, built on the same param groups.
        rho: TOTAL ascent length (each of the ``steps`` ascents moves ``rho/steps``).
        steps: number of ascent steps k >= 1.
        rho_max: search radius; ``None`` means ``2 * rho``.
        alpha: interpolation parameter (>= 0; above 1 continues past g) used until a
            search changes it.
        alpha_max, alpha_delta: the search grid ``arange(0, alpha_max + 1e-5, alpha_delta)``.
        eps: added to every norm before dividing (0 allowed: a zero vector then has the
            unit vector 0).
        backend: ``"auto"`` or a name from :func:`xsam_fast.available_backends`.
        nonfinite: a non-finite gradient, sum or coefficient skips the step with
            theta_0 restored. ``"warn"`` (default): decided on the device (no host
            synchronisation), counted in ``stats()["skipped_steps"]`` and warned about
            when the host next reads the count (:meth:`stats`, a search,
            :meth:`state_dict`), and at the 1st, 2nd, 4th... skip from a host copy
            of the count made without waiting (see :mod:`xsam_fast.reporting`);
            ``"raise"``: reads the flag on the host after every pass and raises
            ``FloatingPointError``; ``"none"``: no check (NaN reaches the weights, as
            with plain torch optimizers).
        model: the model, for BatchNorm handling in :meth:`step` and the search
            (without it, :meth:`step` learns the BatchNorm layers that run in its
            first pass).
        search_interval: with :meth:`step`, search alpha every this many XSAM steps
            (needs ``search_loss``).
        search: search strategy, a key of :data:`xsam_fast.search.STRATEGIES`.
        search_batch: grid points per forward pass of the search (``torch.func.vmap``;
            needs a :class:`~xsam_fast.search.ModelLoss` search loss).
        interval: :meth:`step` runs the full XSAM step every ``interval``-th call and a
            plain base step (one forward/backward, guarded like an XSAM step) between.
        max_grad_norm: clip G to this global L2 norm before the base step (as
            ``clip_grad_norm_``), from the step's own sums (no extra pass).
        fuse_base_update: fuse SGD/Adam/AdamW into the interpolation pass (default);
            ``False`` writes G into ``.grad`` and calls the base ``step()``.
        process_group: the data-parallel group (DDP, FSDP2, HSDP); see
            :mod:`xsam_fast.distributed`.
        adaptive, eta, adaptive_weights_only: ASAM's geometry ``T = |theta_0| + eta``
            (``eta > 0``), on tensors with ``ndim > 1`` only unless
            ``adaptive_weights_only=False``; see ``docs/algorithm.md``.
        **base_kwargs: hyper-parameters of the base optimizer (``lr``, ``momentum``...).

    After a step :meth:`stats` reads ``alpha``, ``psi`` (the angle between the ascent
    direction and g, in radians), ``grad_norm``, ``d_norm``,
    ``skipped`` and ``skipped_steps`` (one synchronisation); :attr:`search_curve` and
    :attr:`search_history` hold the searches (see :meth:`register_search_hook`).
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
        rho = V.number("rho", rho, minimum=0)
        rho_max = None if rho_max is None else V.number("rho_max", rho_max, minimum=0)
        eps, eta = V.number("eps", eps, minimum=0), V.number("eta", eta, minimum=0)
        V.check_choices(
            base_optimizer=base_optimizer,
            backend=backend,
            nonfinite=nonfinite,
            search=search,
            adaptive=adaptive,
            eta=eta,
        )

        super().__init__(params, dict(rho=rho, rho_max=rho_max))
        for i, group in enumerate(self.param_groups):
            V.check_group(group, i)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        for i, group in enumerate(self.param_groups):  # now with the base's lr, momentum...
            V.check_group(group, i)
        self.defaults.update(self.base_optimizer.defaults)

        self.steps = V.integer("steps", steps, minimum=1)
        self.alpha_max = V.number("alpha_max", alpha_max, minimum=0)
        self.alpha_delta = V.number("alpha_delta", alpha_delta, positive=True)
        self.backend = backend
        self.nonfinite = nonfinite
        self.model = model
        self.search_interval = (
            None
            if search_interval is None
            else V.integer("search_interval", search_interval, minimum=1)
        )
        self.search = search
        self.search_batch = V.integer("search_batch", search_batch, minimum=1)
        self.interval = V.integer("interval", interval, minimum=1)
        self.fuse_base_update = bool(fuse_base_update)
        self.adaptive = bool(adaptive)
        self.eta = eta
        self.adaptive_weights_only = bool(adaptive_weights_only)
        self._comm = Communicator(process_group)
        self.alpha = V.number("alpha", alpha, minimum=0)  # a search sets it; so may you
        self.eps = eps
        self.max_grad_norm = (
            None if max_grad_norm is None else V.number("max_grad_norm", max_grad_norm, minimum=0)
        )
        self._stepper = Stepper(self)
        self._amp: ScaledStep | None = None  # GradScaler bookkeeping of the current step
        self._in_step = False  # inside step(): torch's wrapper fires the step hooks
        self._bn_layers: list[nn.Module] | None = None  # learned when model is None
        self._reported_skips = 0.0
        self._skip_mirror = None  # the skipped-step count's host copy (reporting.SkipMirror)
        self._left_grad = GradMark()  # a gradient the last step left
        self._pass_grad = GradMark()  # the gradient the last ascent used (manual API)

        self.step_count = 0  # completed XSAM steps
        self.base_steps = 0  # plain base-optimizer steps taken by step() (interval > 1)
        self.search_curve: list[tuple[float, float]] = []
        self.search_history: list[dict[str, Any]] = []
        self._search_requested = False  # request_search(): the next XSAM step searches
        self._search_hooks: dict[int, Callable[..., None]] = OrderedDict()

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # during construction, before the base optimizer exists
            super().add_param_group(param_group)
            return
        for key in ("rho", "rho_max"):  # XSAM's defaults here, the base optimizer's there
            param_group.setdefault(key, self.defaults[key])
        V.check_group(param_group)
        base.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    # ------------------------------------------------------------------ the phases
    @torch.no_grad()
    def backup_param(self) -> None:
        """Store theta_0 for every trainable parameter (optional: :meth:`first_step` does it)."""
        self._begin()
        self._stepper.backup_all()

    @torch.no_grad()
    def restore_param(self) -> None:
        """Put theta_0 back into every parameter moved since the step began, and end the
        step: the way back after an exception between :meth:`first_step` and
        :meth:`second_step` (``try: ... except: opt.restore_param(); raise``)."""
        self._stepper.restore()
        self._end_step(completed=False)

    @torch.no_grad()
    def first_step(self, step: int = 0, *, zero_grad: bool = False, scaler: Any = None) -> None:
        """One ascent of length ``rho/steps`` from the current point along ``p.grad``.

        Backs up theta_0 first (parameters that get their first gradient in a later
        ascent are backed up before they move). ``step`` is accepted for the authors'
        call sequence and otherwise unused; ``zero_grad=True`` clears the gradients
        afterwards (davda54/sam's API). ``scaler``: the ``torch.amp.GradScaler`` that
        scaled this backward pass; pass it to every call of the step.
        Calling it more than ``steps`` times in a step raises (and restores theta_0).
        """
        stepper = self._stepper
        if stepper.ascents >= self.steps:
            self.restore_param()
            raise RuntimeError(
                f"first_step() called {self.steps + 1} times in one step with "
                f"steps={self.steps}: call second_step() after the last ascent "
                "(theta_0 restored)"
            )
        self._begin()
        try:
            self._check_new_pass("first_step")
            plan = stepper.prepare()
            unscale_pass(self, plan, scaler, first=stepper.ascents == 0)
            backup = stepper.ascents == 0 and not stepper.backed
            if backup:
                stepper.mark_backed(plan)
            else:
                stepper.back_up_new(plan)
            stepper.ascent(plan, backup=backup, check=self._check())
            self._raise_if_found(plan, "gradient")
        except BaseException:
            self.restore_param()
            raise
        if zero_grad:
            self.zero_grad()
        self._pass_grad.set(None if self._in_step or plan.dtensor else plan.owners[0])

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
        zero_grad: bool = False,
    ) -> Tensor:
        """Interpolate, optionally search alpha, restore theta_0 and step the base optimizer.

        Call after the backward pass at the final ascent point. With
        ``update_alpha=True`` (or a pending :meth:`request_search`) the search evaluates
        ``criterion(model(inputs), targets)`` (the authors' signature) or ``search_loss()``
        at each grid point, forward only. ``scaler``: as in :meth:`first_step`; the
        ``scaler.update()`` that follows sees this step's overflow flag. Returns
        ``||g||`` (the authors' ``scale``) as a 0-d device tensor.
        """
        stepper = self._stepper
        if stepper.ascents == 0:
            raise RuntimeError("second_step() called without first_step() in this step")
        snapshot = search_state(self)
        try:
            self._check_new_pass("second_step")
            plan = stepper.prepare()
            unscale_pass(self, plan, scaler, first=False)
            stepper.back_up_new(plan)
            stepper.restore_gradless(plan)
            stepper.final_sums(plan)
            points = None
            if update_alpha or self._search_requested:
                model = model if model is not None else self.model
                if search_loss is None:
                    if model is None or criterion is None:
                        raise ValueError(
                            "update_alpha=True needs model, inputs, targets and "
                            "criterion, or search_loss (request_search() too)"
                        )
                    search_loss = ModelLoss(model, inputs, targets, criterion)
                points = search_step(self, plan, search_loss, model)
            check = self._check()
            stepper.update_scalars(plan, check)
            self._raise_if_found(plan, "gradient or ascent displacement")
            stepper.base_update(plan, points, check)
        except BaseException:
            restore_search_state(self, snapshot)
            self.restore_param()
            raise
        norm_g = stepper.scalars.on(plan.devices[0])[NORM_G].clone()
        self._left_grad.set(plan.owners[0])  # to recognise it next step
        self.step_count += 1
        self._opt_called = True  # type: ignore[attr-defined]  (LR schedulers check it)
        self._end_step()
        if zero_grad:
            self.zero_grad()
        return norm_g

    # ------------------------------------------------------------------ searching
    def request_search(self) -> None:
        """Make the next XSAM step search alpha (consumed by that search). With :meth:`step`
        it needs a ``search_loss``. Once per epoch: call this before the epoch's first
        step, or pass ``update_alpha=(batch_idx == 0)``."""
        self._search_requested = True

    def register_search_hook(
        self, hook: Callable[["XSAM", dict[str, Any]], None]
    ) -> RemovableHandle:
        """Call ``hook(optimizer, record)`` after every search; returns a handle with ``remove()``.

        ``record`` is a copy of the :attr:`search_history` entry: ``step``, ``alpha``,
        ``curve`` (the evaluated ``(alpha, loss)`` pairs), ``strategy``, ``evaluations``,
        ``forwards``, ``time_s``, and the step's ``psi``, ``grad_norm``, ``d_norm``. If a
        hook raises, the step is undone (theta_0, alpha and the history as before it).
        :class:`xsam_fast.searchlog.SearchLogger` writes the records to a JSON Lines file.
        """
        handle = RemovableHandle(self._search_hooks)
        self._search_hooks[handle.id] = hook
        return handle

    # ------------------------------------------------------------------ internals
    def _begin(self) -> None:
        """Fire the step pre-hooks at the start of a manual-API step."""
        stepper = self._stepper
        if stepper.ascents == 0 and not stepper.backed and not self._in_step:
            hooks.fire_pre(self)

    def _end_step(self, completed: bool = True) -> None:
        """Forget the step's backups; a completed manual-API step fires the post-hooks
        (as torch's wrapper does for step(), not after an exception)."""
        stepper = self._stepper
        began = completed and (stepper.ascents > 0 or bool(stepper.backed))
        scaled = self._amp is not None  # overflow skips are the GradScaler's business
        if self._amp is not None:  # tell the GradScaler what scaler.step would have
            plan = stepper.plan
            if plan is not None:
                self._amp.record(self, stepper.scalars.on(plan.devices[0])[FOUND_INF])
            self._amp = None
        stepper.end()
        self._pass_grad.clear()
        if completed and not scaled:
            self._poll_skips()
        if began and not self._in_step:
            hooks.fire_post(self)

    def _check_new_pass(self, phase: str) -> None:
        """Refuse a manual-API pass whose gradients are still those of the last ascent:
        no backward since, or one that added onto them (zero_grad() forgotten)."""
        verdict = self._pass_grad.verdict()
        if verdict == "unchanged":
            raise RuntimeError(
                f"XSAM: {phase}() found the gradients the last first_step() used: run the "
                "backward pass at the ascent point between the two calls (theta_0 restored)"
            )
        if verdict == "accumulated":
            raise RuntimeError(
                f"XSAM: {phase}() found the gradients of the last first_step() with one "
                "backward pass added onto them (g0 + g, not g): call zero_grad() (or "
                "first_step(zero_grad=True)) before the backward pass at the ascent point. "
                "A gradient written in place yourself: assign p.grad = ... instead "
                "(theta_0 restored)"
            )

    def _check(self) -> bool:
        return self.nonfinite != "none" or self._amp is not None

    def _raise_if_found(self, plan: Any, what: str) -> None:
        if self.nonfinite == "raise" and self._amp is None and self._stepper.found_inf(plan):
            raise FloatingPointError(f"XSAM: non-finite {what} norm; theta_0 restored")

    def _bn_modules(self) -> Any:
        """What BatchNorm freezing acts on: the model, or the layers learned without one."""
        return self.model if self.model is not None else self._bn_layers
