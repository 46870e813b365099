"""What the trainer recipes share: data, model, XSAM settings, and the plain-PyTorch loop.

``lightning_xsam.py`` and ``accelerate_xsam.py`` train the same model on the same
batches with the same optimizer; :func:`train_plain` is the loop they must agree
with (``tests/test_recipes.py`` checks that the parameters come out equal).

Everything is small enough for a CPU: 8x8 synthetic "images" of 10 classes (a
fixed template per class plus noise), the BatchNorm CNN of ``xsam-fast train``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from xsam_fast import XSAM
from xsam_fast.train.model import SmallCNN


@dataclass
class RecipeConfig:
    epochs: int = 3
    samples: int = 512
    batch_size: int = 32
    width: int = 8
    lr: float = 0.1
    seed: int = 0


def make_dataset(cfg: RecipeConfig) -> TensorDataset:
    """``cfg.samples`` noisy 1x8x8 images of 10 class templates, in a fixed (shuffled) order."""
    gen = torch.Generator().manual_seed(1000 + cfg.seed)
    templates = torch.randn(10, 1, 8, 8, generator=gen)
    labels = torch.randint(0, 10, (cfg.samples,), generator=gen)
    images = templates[labels] + 0.8 * torch.randn(cfg.samples, 1, 8, 8, generator=gen)
    return TensorDataset(images, labels)


def make_loader(cfg: RecipeConfig) -> DataLoader:
    # shuffle=False: the order is fixed so that every trainer sees the same batches
    # (Lightning and Accelerate may replace a shuffling sampler with their own)
    return DataLoader(make_dataset(cfg), batch_size=cfg.batch_size, shuffle=False)


def make_model(cfg: RecipeConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return SmallCNN(in_channels=1, num_classes=10, width=cfg.width)


def make_optimizer(model: nn.Module, cfg: RecipeConfig) -> XSAM:
    """XSAM around SGD; ``model=`` so that only the first pass moves BatchNorm statistics."""
    return XSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.15,
        rho_max=0.3,
        lr=cfg.lr,
        momentum=0.9,
        weight_decay=1e-3,
        alpha_max=1.0,
        alpha_delta=0.25,
        model=model,
    )


def make_scheduler(opt: torch.optim.Optimizer, cfg: RecipeConfig, steps_per_epoch: int):
    """Cosine learning rate over the whole run, stepped after every batch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)


def searches(batch_idx: int) -> bool:
    """Search alpha on the first batch of every epoch (the authors' schedule)."""
    return batch_idx == 0


class Closure:
    """torch's closure convention: zero the gradients, forward, backward, return the loss.

    ``first_loss`` keeps the loss of the first call (at the step's starting point),
    for loops whose optimizer wrapper does not return it.
    """

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        backward: Callable[[torch.Tensor], None],
    ) -> None:
        self.opt, self.model, self.x, self.y, self.backward = opt, model, x, y, backward
        self.first_loss: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.backward(loss)
        if self.first_loss is None:
            self.first_loss = loss.detach()
        return loss


def train_plain(cfg: RecipeConfig) -> tuple[nn.Module, XSAM, list[float]]:
    """The plain-PyTorch loop: ``(model, optimizer, loss of every step)``."""
    model = make_model(cfg)
    opt = make_optimizer(model, cfg)
    loader = make_loader(cfg)
    sched = make_scheduler(opt, cfg, len(loader))
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        for i, (x, y) in enumerate(loader):
            closure = Closure(opt, model, x, y, lambda loss: loss.backward())
            opt.step(
                closure,
                search_loss=lambda x=x, y=y: F.cross_entropy(model(x), y),
                update_alpha=searches(i),
            )
            sched.step()
            losses.append(float(closure.first_loss))
    return model, opt, losses


@torch.no_grad()
def accuracy(model: nn.Module, cfg: RecipeConfig) -> float:
    model.eval()
    data = make_dataset(cfg)
    images, labels = data.tensors
    return float((model(images).argmax(1) == labels).float().mean())


def parse_args(description: str) -> RecipeConfig:
    d = RecipeConfig()
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--samples", type=int, default=d.samples)
    parser.add_argument("--batch_size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args()
    return RecipeConfig(
        epochs=args.epochs,
        samples=args.samples,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )


def report(name: str, model: nn.Module, opt: XSAM, losses: list[float], cfg: RecipeConfig) -> None:
    per_epoch = len(losses) // cfg.epochs
    for e in range(cfg.epochs):
        chunk = losses[e * per_epoch : (e + 1) * per_epoch]
        print(
            f"{name} epoch {e + 1}: mean loss {sum(chunk) / len(chunk):.4f}, "
            f"alpha {opt.search_history[e]['alpha'] if e < len(opt.search_history) else opt.alpha}"
        )
    print(
        f"{name}: {len(losses)} XSAM steps, {len(opt.search_history)} alpha searches, "
        f"training accuracy {100 * accuracy(model, cfg):.1f}%"
    )


if __name__ == "__main__":
    config = parse_args("The plain-PyTorch XSAM loop the recipes are checked against.")
    report("plain", *train_plain(config), config)
