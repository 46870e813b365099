"""XSAM in a Hugging Face Accelerate training loop.

    pip install accelerate           # or: pip install "xsam-fast[recipes]"
    python examples/accelerate_xsam.py --epochs 3

``accelerator.prepare`` wraps the model, the optimizer, the data loader and the
scheduler; the closure calls ``accelerator.backward(loss)``. Two things to know:

* ``AcceleratedOptimizer.step(closure)`` forwards the closure only (and returns
  nothing), so the steps that search alpha call the wrapped XSAM directly:
  ``optimizer.optimizer.step(closure, search_loss=..., update_alpha=True)``. Without
  a GradScaler the wrapper's ``step`` does nothing else but call
  ``optimizer.step(closure)`` (accelerate 1.x), so both paths step alike;
* fp16 mixed precision (a ``GradScaler``) does not take a closure; use bf16
  (``Accelerator(mixed_precision="bf16")``) or fp32.

Gradient accumulation does not fit a closure-based step (every pass of a step
must see the same batch): leave ``gradient_accumulation_steps`` at 1. The result
equals the plain loop of ``recipe_common.train_plain`` (``tests/test_recipes.py``).
"""

from __future__ import annotations

from accelerate import Accelerator
from torch.nn import functional as F

from recipe_common import (
    Closure,
    RecipeConfig,
    make_loader,
    make_model,
    make_optimizer,
    make_scheduler,
    parse_args,
    report,
    searches,
)


def train_accelerate(cfg: RecipeConfig, accelerator: Accelerator | None = None):
    """``(model, XSAM optimizer, loss of every step)`` after ``cfg.epochs`` epochs."""
    accelerator = accelerator or Accelerator(cpu=True)
    model = make_model(cfg)
    opt = make_optimizer(model, cfg)
    loader = make_loader(cfg)
    sched = make_scheduler(opt, cfg, len(loader))
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        for i, (x, y) in enumerate(loader):
            closure = Closure(opt, model, x, y, accelerator.backward)
            if searches(i):
                opt.optimizer.step(
                    closure,
                    update_alpha=True,
                    search_loss=lambda x=x, y=y: F.cross_entropy(model(x), y),
                )
            else:
                opt.step(closure)
            sched.step()
            losses.append(float(closure.first_loss))
    return accelerator.unwrap_model(model), opt.optimizer, losses


if __name__ == "__main__":
    config = parse_args(__doc__.splitlines()[0])
    report("accelerate", *train_accelerate(config), config)
