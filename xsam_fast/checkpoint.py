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

#: search records kept in a checkpoint (the newest ones)
HISTORY_IN_CHECKPOINT = 100
KEY = "xsam"


def xsam_state(opt: Any) -> str:
    """XSAM's own state as JSON (reads the skipped-step count from the device)."""
    return json.dumps(dict(
        alpha=opt.alpha, step_count=opt.step_count, base_steps=opt.base_steps,
        search_requested=opt._search_requested, search_curve=opt.search_curve,
        search_history=opt.search_history[-HISTORY_IN_CHECKPOINT:],
        skipped_steps=opt.skipped_steps()))


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


def split(state_dict: dict[str, Any], groups: list[dict[str, Any]]
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
        raise ValueError(f"the state dict has {len(saved)} param groups, this optimizer "
                         f"{len(groups)}")
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
