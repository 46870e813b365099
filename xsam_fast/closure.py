"""``XSAM.step(closure)``: the closure API, on top of the phases of :mod:`xsam_fast.optimizer`.

A step calls the closure ``steps + 1`` times, each time followed by a phase
(``first_step`` after each ascent's pass, ``second_step`` after the last), with
BatchNorm statistics frozen after the first pass, and the search when one is due.
With ``interval > 1`` the calls between two full steps are plain base steps: one
pass and the base optimizer's step, guarded against non-finite values like a full
step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .amp import unscale_pass
from .batchnorm import frozen_running_stats, learn_batchnorm

LossFn = Callable[[], Tensor]


class ClosureMixin:
    """``step(closure)`` of :class:`~xsam_fast.XSAM`."""

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        search_loss: LossFn | None = None,
        update_alpha: bool | None = None,
        scaler: Any = None,
    ) -> Tensor | None:
        """A whole XSAM step: ``steps + 1`` calls of ``closure``, then the update.

        ``closure`` computes the loss and its gradients (``loss.backward()``) and returns
        the loss; XSAM clears the gradients before each later call, so closures with or
        without their own ``zero_grad()`` give the same step (the first pass only sets the
        ascent's direction, which gradients accumulated onto it do not change).
        ``search_loss`` is a forward-only callable returning the loss at the current
        parameters, called at each grid point
        when a search runs (every ``search_interval`` steps, with ``update_alpha=True``, or
        after :meth:`request_search`). Returns the loss of the first pass. If anything
        raises inside the step, the parameters are left at theta_0.

        fp16 with ``torch.amp.GradScaler``: the closure calls
        ``scaler.scale(loss).backward()``; pass ``scaler=scaler`` here and call
        ``scaler.update()`` after the step (instead of ``scaler.step``).

        ``step()`` without a closure is what ``torch.distributed.checkpoint`` calls on a
        fresh optimizer, with every learning rate set to 0, to create the optimizer
        state: then it creates the base optimizer's state and moves nothing. Otherwise
        it raises (XSAM needs a closure, or :meth:`first_step`/:meth:`second_step`).
        """
        if closure is None:
            return self._init_state()
        if self._stepper.ascents:
            self.restore_param()
            raise RuntimeError(
                "XSAM: step(closure) called while a manual-API step is under way "
                "(first_step() without its second_step()): finish that step with "
                "second_step(), or leave it with restore_param() (theta_0 restored now)"
            )
        if (self.step_count + self.base_steps) % self.interval != 0:
            if update_alpha:  # done by the next full step
                self.request_search()
            return self._plain_step(closure, scaler)
        if update_alpha is None:
            update_alpha = (
                self.search_interval is not None and self.step_count % self.search_interval == 0
            )
        if (update_alpha or self._search_requested) and search_loss is None:
            why = (
                "request_search() is pending"
                if self._search_requested and not update_alpha
                else "a search is due (update_alpha=True or search_interval)"
            )
            raise ValueError(f"{why}: this step needs search_loss, a forward-only loss callable")
        self._in_step = True
        try:
            # the first pass keeps gradients made for it (a backward run before step(), as
            # davda54/sam's loop does), not those the last step left (a missing zero_grad)
            stale = self._left_grad.holds()
            loss = self._closure(
                closure, learn=self.model is None and self._bn_layers is None, clear=stale
            )
            with frozen_running_stats(self._bn_modules()):
                self.first_step(0, scaler=scaler)
                for i in range(1, self.steps):
                    self._closure(closure)
                    self.first_step(i, scaler=scaler)
                self._closure(closure)
                self.second_step(
                    update_alpha=update_alpha,
                    model=self.model,
                    search_loss=search_loss,
                    scaler=scaler,
                )
        except BaseException:
            self.restore_param()
            raise
        finally:
            self._in_step = False
        return loss

    def _closure(
        self, closure: Callable[[], Tensor], learn: bool = False, clear: bool = True
    ) -> Tensor:
        """One pass: gradients cleared (unless ``clear`` is False: the first pass), then
        ``closure()`` with gradients enabled (with ``learn``, the BatchNorm layers that run
        in it are learned, for steps without ``model=``: done in the first step)."""
        if clear:
            self.zero_grad()
        with torch.enable_grad():
            if not learn:
                return closure()
            found: list[nn.Module] = []
            with learn_batchnorm(found):
                loss = closure()
            self._bn_layers = found
            return loss

    def _plain_step(self, closure: Callable[[], Tensor], scaler: Any = None) -> Tensor:
        """One forward/backward and a base step from the params (``interval > 1``), with
        the same non-finite guard as an XSAM step."""
        loss = self._closure(closure)  # the gradient is stepped: a fresh one
        stepper = self._stepper
        with torch.no_grad():
            try:
                plan = stepper.prepare()
                unscale_pass(self, plan, scaler, first=True)
                check = self._check()
                stepper.plain_sums(plan, check)
                self._raise_if_found(plan, "gradient")
                stepper.base_update(plan, None, check, plain=True)
            finally:
                self._end_step()
        self.base_steps += 1
        self._opt_called = True  # type: ignore[attr-defined]
        return loss
