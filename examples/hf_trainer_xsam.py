"""XSAM in the Hugging Face ``transformers.Trainer``: a Trainer subclass.

    pip install transformers         # or: pip install "xsam-fast[recipes]"
    python examples/hf_trainer_xsam.py --epochs 2 --grad_accum 2 [--bf16]

How the Trainer (transformers 5.x) drives its optimizer: for each optimizer step it
calls ``training_step`` (forward + ``accelerator.backward``) on every micro-batch of
the gradient-accumulation window, clips the accumulated gradient to
``max_grad_norm``, then calls ``self.optimizer.step()`` with no closure, steps the
LR scheduler and zeroes the gradients. ``self.optimizer`` is accelerate's
``AcceleratedOptimizer``, whose ``step(closure=None)`` hands the (absent) closure
to the optimizer it wraps. What :class:`XSAMTrainer` does about it:

* ``create_optimizer`` builds a :class:`TrainerXSAM` around the optimizer that
  ``args.optim`` names (AdamW by default), on the Trainer's parameter groups
  (weight decay / no decay); the Trainer's scheduler acts on these groups, which
  XSAM shares with its base optimizer, so it sets XSAM's learning rate;
* ``training_step`` runs the Trainer's own pass and keeps the micro-batch; on the
  window's last micro-batch it leaves XSAM a closure, and the closure-less
  ``step()`` runs ``XSAM.step(closure, search_loss=..., update_alpha=...)``. The
  closure's first call hands over the gradient the Trainer has just accumulated
  (no extra pass); its later calls re-run ``training_step`` on every micro-batch,
  so each pass sees the whole accumulated batch with the Trainer's loss scaling,
  autocast and ``accelerator.backward``;
* alpha is searched on the first optimizer step of every epoch (``state.epoch`` a
  whole number, so a run resumed mid-epoch does not search), on the sum of
  ``compute_loss`` over the window's micro-batches (forward only);
* ``max_grad_norm`` becomes XSAM's ``max_grad_norm``: it clips the interpolated
  gradient the base optimizer steps with. The Trainer's own clipping only rescales
  the first pass's gradient, which XSAM normalises for the ascent; the logged
  ``grad_norm`` is that first pass's norm;
* checkpoints: ``optimizer.pt`` holds ``XSAM.state_dict()`` with its ``"xsam"`` group
  entry (alpha, step counters, search history), restored on
  ``train(resume_from_checkpoint=...)``.

Mixed precision: ``bf16=True`` autocasts every pass (on the CPU too). ``fp16=True``
is refused: on a GPU the Trainer uses a GradScaler, which unscales the first
pass's gradient itself and cannot step with a closure; on the CPU the Trainer
ignores ``fp16`` (no autocast, no scaler). DeepSpeed and FSDP own the optimizer
step and are refused. ``tests/test_hf_trainer.py`` checks the parameters against a
plain XSAM loop, with and without accumulation, in fp32 and bf16, and the resume.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from xsam_fast import XSAM

# XSAM's settings in this recipe: a 9-point alpha grid 0, 0.25, ..., 2
XSAM_KWARGS: dict[str, Any] = dict(rho=0.2, alpha_max=2.0, alpha_delta=0.25)


class TrainerXSAM(XSAM):
    """XSAM whose ``step()`` without a closure runs the step :class:`XSAMTrainer` prepared.

    ``pending``: the keyword arguments of that :meth:`XSAM.step` call (``closure``,
    ``search_loss``, ``update_alpha``), consumed by it. With a closure, ``step``
    is XSAM's.
    """

    pending: dict[str, Any] | None = None

    def step(self, closure=None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if closure is not None:
            return super().step(closure, **kwargs)
        if kwargs:
            raise TypeError(
                f"TrainerXSAM.step() without a closure takes no arguments, got {sorted(kwargs)}"
            )
        if self.pending is None:
            raise RuntimeError(
                "TrainerXSAM.step() without a closure runs the step that "
                "XSAMTrainer prepares on the last micro-batch of a window; "
                "none is pending"
            )
        pending, self.pending = self.pending, None
        return super().step(**pending)


class _WindowClosure:
    """XSAM's closure over one accumulation window (torch's convention: zero, passes, loss).

    The first call returns ``first_loss``: the Trainer's passes at theta_0 already left
    their gradient. Every later call zeroes the gradients and re-runs the Trainer's
    training step on each micro-batch (DDP synchronises on the last one only).
    """

    def __init__(
        self,
        trainer: "XSAMTrainer",
        model: nn.Module,
        batches: list[dict],
        num_items: Any,
        first_loss: torch.Tensor,
    ) -> None:
        self.trainer, self.model, self.batches, self.num_items = trainer, model, batches, num_items
        self.first_loss: torch.Tensor | None = first_loss

    def __call__(self) -> torch.Tensor:
        if self.first_loss is not None:
            loss, self.first_loss = self.first_loss, None
            return loss
        self.model.zero_grad(set_to_none=True)
        loss: Any = 0
        for i, inputs in enumerate(self.batches):
            last = i == len(self.batches) - 1
            with contextlib.nullcontext() if last else self.trainer.accelerator.no_sync(self.model):
                loss = loss + self.trainer.micro_step(self.model, inputs, self.num_items)
        return loss

    def search_loss(self) -> torch.Tensor:
        """The window's loss at the current parameters, forward only."""
        tr = self.trainer
        total: Any = 0
        for inputs in self.batches:
            with tr.compute_loss_context_manager():
                total = total + tr.compute_loss(
                    self.model, tr._prepare_inputs(inputs), num_items_in_batch=self.num_items
                )
        return total


class XSAMTrainer(Trainer):
    """``transformers.Trainer`` that trains with XSAM; ``xsam``: XSAM's keyword arguments.

    The optimizer is XSAM around ``args.optim`` (``optimizer_cls_and_kwargs`` also
    works); see the module docstring for what happens to each Trainer feature.
    """

    def __init__(self, *args: Any, xsam: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.xsam_kwargs = dict(xsam or {})
        clash = {"model", "max_grad_norm", "search_interval"} & self.xsam_kwargs.keys()
        if clash:
            raise ValueError(
                f"XSAMTrainer sets {sorted(clash)} itself (the model, "
                "TrainingArguments.max_grad_norm, a search per epoch)"
            )
        if self.args.fp16:
            raise ValueError(
                "XSAMTrainer does not support fp16=True: on a GPU the Trainer's "
                "GradScaler steps without a closure, and on the CPU fp16 is ignored; "
                "use bf16=True or fp32"
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "XSAMTrainer does not support DeepSpeed or FSDP: they own the optimizer step"
            )
        if self.optimizer is not None and not isinstance(self.optimizer, TrainerXSAM):
            raise TypeError(
                "XSAMTrainer creates its optimizer (a TrainerXSAM); pass "
                "optimizer_cls_and_kwargs for the base optimizer, not "
                f"{self.optimizer!r}"
            )
        self._window: list[dict] = []
        self._window_loss: Any = 0  # the sum of the window's first-pass losses

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
                self.args, model
            )
            if {"params", "model", "optimizer_dict"} & kwargs.keys():
                raise ValueError(
                    f"optimizer {cls!r} builds its own parameter groups; XSAMTrainer "
                    "needs a torch.optim.Optimizer class on the Trainer's groups"
                )
            decay = set(self.get_decay_parameter_names(model))
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for n, p in trainable if (n in decay) == decays], "weight_decay": wd}
                for decays, wd in ((True, self.args.weight_decay), (False, 0.0))
            ]
            clip = self.args.max_grad_norm if self.args.max_grad_norm > 0 else None
            self.optimizer = TrainerXSAM(
                [g for g in groups if g["params"]],
                cls,
                model=model,
                max_grad_norm=clip,
                **self.xsam_kwargs,
                **kwargs,
            )
        return self.optimizer

    def micro_step(
        self, model: nn.Module, inputs: dict, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The Trainer's own training step on one micro-batch: forward, backward, scaled loss."""
        return super().training_step(model, inputs, num_items_in_batch)

    def training_step(
        self, model: nn.Module, inputs: dict, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = self.micro_step(model, inputs, num_items_in_batch)
        self._window.append(inputs)
        self._window_loss = self._window_loss + loss
        if self.accelerator.sync_gradients:  # the window's last micro-batch: the step follows
            closure = _WindowClosure(
                self, model, self._window, num_items_in_batch, self._window_loss
            )
            self.xsam.pending = dict(
                closure=closure,
                search_loss=closure.search_loss,
                update_alpha=float(self.state.epoch).is_integer(),
            )
            self._window, self._window_loss = [], 0
        return loss

    @property
    def xsam(self) -> TrainerXSAM:
        """The TrainerXSAM (``self.optimizer`` may be accelerate's wrapper around it)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)


# ----------------------------------------------------------------- the example run
@dataclass
class HFRecipeConfig:
    epochs: int = 2
    samples: int = 64
    batch_size: int = 4  # per micro-batch
    grad_accum: int = 2
    lr: float = 1e-2
    weight_decay: float = 0.01  # on all but the norm weights (the Trainer's grouping)
    warmup_steps: int = 2  # then a linear decay to 0 (the Trainer's default schedule)
    seed: int = 0
    bf16: bool = False


VOCAB, SEQ_LEN = 32, 8


def make_dataset(cfg: HFRecipeConfig) -> list[dict[str, torch.Tensor]]:
    """``cfg.samples`` token sequences (int64, length 8) that step by a fixed stride mod 32.

    ``labels`` = ``input_ids`` (the causal LM shifts them), so the next token is learnable.
    """
    gen = torch.Generator().manual_seed(1000 + cfg.seed)
    start = torch.randint(0, VOCAB, (cfg.samples, 1), generator=gen)
    stride = torch.randint(1, 4, (cfg.samples, 1), generator=gen)
    ids = (start + stride * torch.arange(SEQ_LEN)) % VOCAB
    return [dict(input_ids=row, labels=row.clone()) for row in ids]


def make_model(cfg: HFRecipeConfig) -> LlamaForCausalLM:
    """A one-layer Llama of width 16 from a config (about 3.6k parameters, no download)."""
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=SEQ_LEN,
        )
    )


def make_args(cfg: HFRecipeConfig, output_dir: str, **overrides: Any) -> TrainingArguments:
    """CPU, fixed data order (sequential sampler), loss and LR logged at every step."""
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=True,
        seed=cfg.seed,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        bf16=cfg.bf16,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def train_hf(
    cfg: HFRecipeConfig,
    output_dir: str,
    *,
    xsam: dict[str, Any] = XSAM_KWARGS,
    resume_from_checkpoint: str | None = None,
    callbacks: list | None = None,
    **overrides: Any,
) -> XSAMTrainer:
    """Train ``make_model(cfg)`` on ``make_dataset(cfg)``; returns the trainer.

    ``overrides``: TrainingArguments fields (e.g. ``save_strategy="steps"``).
    """
    trainer = XSAMTrainer(
        model=make_model(cfg),
        args=make_args(cfg, output_dir, **overrides),
        train_dataset=make_dataset(cfg),
        xsam=xsam,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


@torch.no_grad()
def next_token_accuracy(model: nn.Module, cfg: HFRecipeConfig) -> float:
    model.eval()
    ids = torch.stack([d["input_ids"] for d in make_dataset(cfg)])
    pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
    return float((pred == ids[:, 1:]).float().mean())


def main() -> None:
    d = HFRecipeConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for name in ("epochs", "samples", "batch_size", "grad_accum", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(d, name))
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU or Ampere+ GPU)")
    cfg = HFRecipeConfig(**vars(parser.parse_args()))
    with tempfile.TemporaryDirectory() as out:
        trainer = train_hf(cfg, out)
    opt = trainer.xsam
    for record in opt.search_history:
        print(f"search at XSAM step {record['step']}: alpha {record['alpha']}")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(
        f"hf trainer: {opt.step_count} XSAM steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
        f"next-token accuracy "
        f"{100 * next_token_accuracy(trainer.model, cfg):.1f}%"
    )


if __name__ == "__main__":
    main()
