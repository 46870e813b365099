"""XSAM's part of a checkpoint, kept where every torch checkpoint route keeps it.

``XSAM.state_dict()`` is the base optimizer's state dict (its state and param
groups under torch's names) with XSAM's own state in the first param group's
entry ``"xsam"``, one JSON string (a single leaf, whatever the length of the
history, which ``torch.distributed.checkpoint`` needs to match a fresh
optimizer's state dict key for key): alpha, the step counters (so the ``interval`` phase resumes),
a pending :meth:`~xsam_fast.XSAM.request_search`, the last search curve, the
skipped-step count and the last :data:`HISTORY_IN_CHECKPOINT` search records
(the full log belongs to :class:`~xsam_fast.searchlog.SearchLogger`). Param
groups are what ``torch.distributed.checkpoint`` (``get_optimizer_state_dict`` /
``set_optimizer_state_dict``) and FSDP's optimizer state utilities carry from
one process to another, where a top-level key would be dropped. theta_0 is
scratch within a step and is not saved.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from . import hooks

#: search records kept in a checkpoint (the newest ones)
HISTORY_IN_CHECKPOINT = 100
KEY = "xsam"


def xsam_state(opt: Any) -> str:
    """XSAM's own state as JSON (reads the skipped-step count from the device)."""
    return json.dumps(
        dict(
            alpha=opt.alpha,
            step_count=opt.step_count,
            base_steps=opt.base_steps,
            search_requested=opt._search_requested,
            search_curve=opt.search_curve,
            search_history=opt.search_history[-HISTORY_IN_CHECKPOINT:],
            skipped_steps=opt.skipped_steps(),
        )
    )


def state_dict(opt: Any) -> dict[str, Any]:
    sd = opt.base_optimizer.state_dict()
    sd["param_groups"][0][KEY] = xsam_state(opt)
    return sd


def read(state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """XSAM's state in a state dict made by ``XSAM.state_dict()``, as a dict (None if absent)."""
    groups = state_dict.get("param_groups") or [{}]
    extra = groups[0].get(KEY, state_dict.get(KEY))
    return json.loads(extra) if isinstance(extra, str) else extra


def write(state_dict: dict[str, Any], extra: dict[str, Any]) -> None:
    """Replace XSAM's state in ``state_dict`` (e.g. to edit a checkpoint)."""
    state_dict["param_groups"][0][KEY] = json.dumps(extra)


def split(
    state_dict: dict[str, Any], groups: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(base optimizer's state dict, XSAM's state or None)`` of a state dict to load.

    XSAM's state is found in the first param group (or, in checkpoints of earlier
    versions, at the top level). Groups that lack ``rho``/``rho_max`` (a plain
    torch optimizer's checkpoint, or a group added to the base optimizer directly)
    keep the current group's values. Raises ValueError when the groups do not match.
    """
    sd = dict(state_dict)
    saved = [dict(g) for g in sd.get("param_groups", [])]
    if len(saved) != len(groups):
        raise ValueError(
            f"the state dict has {len(saved)} param groups, this optimizer {len(groups)}"
        )
    extra = sd.pop(KEY, None)
    for i, (g, current) in enumerate(zip(saved, groups)):
        found = g.pop(KEY, None)
        if i == 0 and found is not None:
            extra = found
        for key in ("rho", "rho_max"):
            g.setdefault(key, current.get(key))
    sd["param_groups"] = saved
    return sd, extra


def restore(opt: Any, extra: dict[str, Any] | str) -> None:
    """Put XSAM's saved state (JSON, or a dict from an earlier version) back into ``opt``."""
    if isinstance(extra, str):
        extra = json.loads(extra)
    opt.alpha = float(extra["alpha"])
    opt.step_count = int(extra["step_count"])
    opt.base_steps = int(extra.get("base_steps", 0))
    opt._search_requested = bool(extra.get("search_requested", False))
    opt.search_curve = [tuple(x) for x in extra.get("search_curve", [])]
    opt.search_history = list(copy.deepcopy(extra.get("search_history", [])))
    opt._restore_skipped(int(extra.get("skipped_steps", 0)))


class CheckpointMixin:
    """``state_dict``/``load_state_dict``, pickling and deep copies of :class:`~xsam_fast.XSAM`."""

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, with XSAM's state (alpha, counters, pending
        search, recent searches) in the first param group (see :mod:`xsam_fast.checkpoint`).
        Reads the skipped-step count (one host read) and warns if steps were skipped."""
        sd = state_dict(self)
        self._report_skips()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class, of an earlier version, or of the base optimizer
        class alone (groups then keep their current ``rho``/``rho_max``)."""
        base_sd, extra = split(state_dict, self.param_groups)
        self.base_optimizer.load_state_dict(base_sd)
        self.param_groups = self.base_optimizer.param_groups
        self._stepper.invalidate()
        if extra is not None:
            restore(self, extra)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_stepper")  # plans and device scalars are rebuilt on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from .stepper import Stepper

        super().__setstate__(state)  # type: ignore[misc]
        self._stepper = Stepper(self)

    def _init_state(self) -> None:
        """``step()`` without a closure: torch.distributed.checkpoint's state initialisation
        (zero gradients, every learning rate 0). The base optimizer steps the parameters
        that have no state yet, creating it; parameters that have state keep it as it is
        (torch calls this again before loading into an optimizer it just initialised)."""
        if not all(float(g.get("lr", 0.0)) == 0.0 for g in self.param_groups):
            raise ValueError(
                "XSAM.step needs a closure (it runs the forward and backward passes "
                "steps + 1 times: zero_grad, loss = ..., loss.backward(), return loss), or call "
                "first_step() and second_step() after each backward pass yourself"
            )
        base = self.base_optimizer
        held = {p: p.grad for g in self.param_groups for p in g["params"] if base.state.get(p)}
        try:
            for p in held:
                p.grad = None  # torch optimizers skip parameters without a gradient
            with torch.no_grad():
                hooks.unhooked_step(base)()
        finally:
            for p, grad in held.items():
                p.grad = grad
        self._stepper.invalidate()
