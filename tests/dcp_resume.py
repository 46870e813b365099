"""A torch.distributed.checkpoint round trip of XSAM, as a training script would run it.

``python dcp_resume.py save DIR OUT BASE`` trains ``CUT`` steps, saves model and optimizer
with ``dcp.save`` into DIR, trains on and writes the final parameters and XSAM's state
to OUT. ``python dcp_resume.py load DIR OUT BASE`` starts fresh (a new process), loads
DIR (``get_optimizer_state_dict`` on the fresh optimizer, ``dcp.load``,
``set_optimizer_state_dict``), trains the same remaining steps and writes OUT. Used by
``test_dcp.py`` (one process) and, through :func:`run`, by the FSDP2 scenario of
``test_distributed.py``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from xsam_fast import XSAM

# calls of step() before the save, in all, per "epoch"; with interval 3 the save falls
# between two plain steps, with a search requested at call 4 (a plain step) still pending
CUT, TOTAL, EPOCH, INTERVAL = 5, 10, 4, 3
BASES = {
    "sgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=gen),
        )
        for _ in range(TOTAL)
    ]


def build(model: nn.Module, base: str) -> XSAM:
    """XSAM with a phase to keep (``interval``), two ascents and a search per epoch."""
    cls, kw = BASES[base]
    return XSAM(model.parameters(), cls, rho=0.2, steps=2, interval=INTERVAL, model=model, **kw)


def train(model: nn.Module, opt: XSAM, steps: range) -> None:
    data = batches()
    for i in steps:
        x, y = data[i]
        if i % EPOCH == 0:
            opt.request_search()  # done by the epoch's first XSAM step
        loss = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
        opt.step(lambda: loss().backward(), search_loss=loss)


def state(
    model: nn.Module, opt: XSAM, full: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    return dict(
        params=[full(p) for p in model.parameters()],
        alpha=opt.alpha,
        step_count=opt.step_count,
        base_steps=opt.base_steps,
        searches=[r["step"] for r in opt.search_history],
    )


def run(
    mode: str,
    ckpt: str,
    base: str,
    model: nn.Module | None = None,
    full: Callable[[torch.Tensor], torch.Tensor] = lambda p: p.detach().clone(),
) -> dict[str, Any]:
    """``save``: train CUT steps, dcp.save, train on; ``load``: fresh optimizer, dcp.load,
    train on. Returns the final state. ``model`` (e.g. an FSDP2 model) is made if None."""
    model = make_model() if model is None else model
    opt = build(model, base)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        if mode == "save":
            train(model, opt, range(CUT))
            dcp.save(
                {
                    "model": get_model_state_dict(model),
                    "optim": get_optimizer_state_dict(model, opt),
                },
                checkpoint_id=ckpt,
            )
        else:
            sd = {
                "model": get_model_state_dict(model),
                "optim": get_optimizer_state_dict(model, opt),
            }  # a fresh optimizer
            dcp.load(sd, checkpoint_id=ckpt)
            set_model_state_dict(model, sd["model"])
            set_optimizer_state_dict(model, opt, sd["optim"])
    train(model, opt, range(CUT, TOTAL))
    return state(model, opt, full)


if __name__ == "__main__":
    mode, ckpt, out, base = sys.argv[1:5]
    torch.save(run(mode, ckpt, base), out)
