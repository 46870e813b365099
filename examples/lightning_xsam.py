"""XSAM in PyTorch Lightning: a LightningModule with manual optimization.

    pip install lightning            # or: pip install "xsam-fast[recipes]"
    python examples/lightning_xsam.py --epochs 3

XSAM needs several forward/backward passes per step, so the module turns
Lightning's automatic optimization off and hands XSAM a closure:

* ``self.automatic_optimization = False``;
* in ``training_step``: a closure that zeroes the gradients, runs the forward
  pass and ``self.manual_backward(loss)``; then ``opt.step(closure=closure, ...)``
  on ``self.optimizers()``. Lightning's optimizer wrapper passes extra keyword
  arguments through, so ``search_loss=`` and ``update_alpha=`` reach XSAM;
* ``XSAM(..., model=self)`` so that only the first pass of a step moves the
  BatchNorm running statistics;
* schedulers are stepped by hand in manual optimization (here after every batch).

Lightning's ``gradient_clip_val`` does not apply to manual optimization; use
XSAM's ``max_grad_norm=``, which clips the interpolated gradient without an extra
pass. The result equals the plain loop of ``recipe_common.train_plain`` (checked
by ``tests/test_recipes.py``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

from recipe_common import (
    RecipeConfig,
    make_loader,
    make_model,
    make_optimizer,
    make_scheduler,
    parse_args,
    report,
    searches,
)


class XSAMModule(pl.LightningModule):
    def __init__(self, cfg: RecipeConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.net = make_model(cfg)
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        opt = make_optimizer(self, self.cfg)
        return {
            "optimizer": opt,
            "lr_scheduler": make_scheduler(opt, self.cfg, self.steps_per_epoch),
        }

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        opt = self.optimizers()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(self(x), y)
            self.manual_backward(loss)
            return loss

        loss = opt.step(
            closure=closure,
            search_loss=lambda: F.cross_entropy(self(x), y),
            update_alpha=searches(batch_idx),
        )
        self.lr_schedulers().step()
        self.losses.append(float(loss.detach()))
        return loss.detach()


def train_lightning(cfg: RecipeConfig):
    """``(model, optimizer, loss of every step)`` after ``cfg.epochs`` epochs on the CPU."""
    loader = make_loader(cfg)
    module = XSAMModule(cfg, len(loader))
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return module.net, trainer.optimizers[0], module.losses


if __name__ == "__main__":
    config = parse_args(__doc__.splitlines()[0])
    report("lightning", *train_lightning(config), config)
