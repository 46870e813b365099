"""The Hugging Face Trainer recipe (examples/hf_trainer_xsam.py) trains like a plain XSAM loop.

A one-layer Llama built from a config (no download, no tokenizer) trains on
synthetic token sequences on the CPU through ``XSAMTrainer``; the parameters,
the searched alphas (first optimizer step of each epoch), the step count and
the learning rate of every step must equal those of :func:`train_plain`: XSAM
around AdamW on the same parameter groups, the same linear schedule, the same
micro-batches in the same order. Also: checkpoint save/resume restores alpha
and XSAM's counters, and the misuses the recipe cannot serve raise.
transformers is an optional dependency (the ``recipes`` and ``test`` extras).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("transformers")
from transformers import TrainerCallback, get_scheduler  # noqa: E402

from xsam_fast import XSAM  # noqa: E402
from xsam_fast import checkpoint as checkpoint_state  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")

#: (atol, rtol) on parameters after the run, by autocast dtype. Both loops run the same
#: operations (bf16: under the same autocast); the Trainer's clipping of the first pass's
#: gradient (which XSAM normalises) is the one rounding difference (1e-8 seen in fp32).
TOLERANCES = {"fp32": (1e-6, 1e-5), "bf16": (1e-6, 1e-5)}


@pytest.fixture
def hf(monkeypatch):
    """The recipe module (``examples/`` on sys.path, as the script runs)."""
    monkeypatch.syspath_prepend(EXAMPLES)
    import hf_trainer_xsam

    return hf_trainer_xsam


def train_plain(hf, cfg, xsam: dict, max_grad_norm: float | None = 1.0):
    """The plain loop: ``(model, XSAM, learning rate of every step)``.

    Each step's closure runs forward/backward on every micro-batch of the window,
    with the causal-LM loss normalised by the window's predicted-token count (as
    the Trainer does); alpha is searched on the first step of each epoch.
    """
    model = hf.make_model(cfg)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if "norm" not in n], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if "norm" in n], "weight_decay": 0.0},
    ]
    opt = XSAM(
        groups,
        torch.optim.AdamW,
        lr=cfg.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        model=model,
        max_grad_norm=max_grad_norm,
        **xsam,
    )
    data = hf.make_dataset(cfg)
    window = cfg.batch_size * cfg.grad_accum
    steps = cfg.epochs * math.ceil(len(data) / window)
    sched = get_scheduler(
        "linear", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=steps
    )
    model.train()
    lrs = []
    for _ in range(cfg.epochs):
        for i, start in enumerate(range(0, len(data), window)):
            end = min(start + window, len(data))
            micro = [
                {
                    k: torch.stack([d[k] for d in data[s : min(s + cfg.batch_size, end)]])
                    for k in ("input_ids", "labels")
                }
                for s in range(start, end, cfg.batch_size)
            ]
            tokens = torch.tensor(float(sum(int(b["labels"][:, 1:].ne(-100).sum()) for b in micro)))

            def loss_of(batch, tokens=tokens):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    return model(**batch, num_items_in_batch=tokens).loss.float()

            def closure(micro=micro):
                opt.zero_grad()
                total = 0
                for batch in micro:
                    loss = loss_of(batch)
                    loss.backward()
                    total = total + loss.detach()
                return total

            lrs.append(opt.param_groups[0]["lr"])
            opt.step(
                closure,
                search_loss=lambda micro=micro: sum(loss_of(b) for b in micro),
                update_alpha=i == 0,
            )
            sched.step()
    return model, opt, lrs


def assert_same_parameters(
    got: torch.nn.Module, want: torch.nn.Module, atol: float, rtol: float
) -> None:
    """Every parameter equal within ``atol + rtol * |want|``; names the first element off."""
    want_params = dict(want.named_parameters())
    for name, p in got.named_parameters():
        a, b = p.detach().double().flatten(), want_params[name].detach().double().flatten()
        bad = ((a - b).abs() > atol + rtol * b.abs()).nonzero()
        if len(bad):
            i = int(bad[0])
            raise AssertionError(
                f"{name}: {len(bad)} of {a.numel()} elements off; first at {i}: "
                f"got {a[i].item()!r}, want {b[i].item()!r}"
            )


def logged_learning_rates(trainer) -> list[float]:
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


@pytest.mark.parametrize(
    "precision,grad_accum",
    [("fp32", 1), ("fp32", 2), ("bf16", 2)],
    ids=["fp32-accum1", "fp32-accum2", "bf16-accum2"],
)
def test_trainer_matches_plain_loop(hf, tmp_path, precision, grad_accum):
    # 20 samples: with accumulation the epoch's last window holds one micro-batch
    cfg = hf.HFRecipeConfig(
        epochs=2, samples=20, batch_size=4, grad_accum=grad_accum, bf16=precision == "bf16"
    )
    trainer = hf.train_hf(cfg, str(tmp_path))
    model, opt, lrs = train_plain(hf, cfg, hf.XSAM_KWARGS)

    got = trainer.xsam
    steps = cfg.epochs * math.ceil(cfg.samples / (cfg.batch_size * grad_accum))
    assert got.step_count == opt.step_count == trainer.state.global_step == steps
    assert [(h["step"], h["alpha"]) for h in got.search_history] == [
        (h["step"], h["alpha"]) for h in opt.search_history
    ]
    assert [h["step"] for h in got.search_history] == [0, steps // 2]  # once per epoch
    # the Trainer's scheduler set XSAM's learning rate: warm-up, then linear decay
    assert logged_learning_rates(trainer) == pytest.approx(lrs, rel=1e-6)
    assert got.base_optimizer.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert lrs[cfg.warmup_steps] == pytest.approx(cfg.lr) and lrs[-1] < cfg.lr / 2
    assert_same_parameters(trainer.model, model, *TOLERANCES[precision])
    initial = hf.make_model(cfg)
    moved = max(
        float((p - q).detach().abs().max())
        for p, q in zip(model.parameters(), initial.parameters())
    )
    assert moved > 1e-3  # training did change the parameters


def test_bf16_autocasts_every_pass(hf, tmp_path):
    """With bf16=True each XSAM pass (and the search) runs the model's matmuls in bf16."""
    cfg = hf.HFRecipeConfig(epochs=1, samples=8, batch_size=4, grad_accum=2, bf16=True)
    trainer = hf.XSAMTrainer(
        model=hf.make_model(cfg),
        args=hf.make_args(cfg, str(tmp_path)),
        train_dataset=hf.make_dataset(cfg),
        xsam=hf.XSAM_KWARGS,
    )
    dtypes = []
    trainer.model.lm_head.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    trainer.train()
    grid = len(trainer.xsam.search_history[0]["curve"])
    # one step of 2 micro-batches: 2 passes x 2 micro-batches, and the search's forwards
    assert len(dtypes) == 2 * 2 + 2 * grid and set(dtypes) == {torch.bfloat16}


class AlphaAtStart(TrainerCallback):
    """Records XSAM's alpha and step count when training starts (after a resume's loading)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.alpha, self.step_count = inner.alpha, inner.step_count


def test_resume_restores_alpha_and_counters(hf, tmp_path):
    cfg = hf.HFRecipeConfig(epochs=2, samples=32, batch_size=4, grad_accum=2)
    xsam = {**hf.XSAM_KWARGS, "alpha": 0.1}  # an initial alpha the searches move away from
    full = hf.train_hf(
        cfg, str(tmp_path / "full"), xsam=xsam, save_strategy="steps", save_steps=6
    )  # 4 steps per epoch: saved mid-epoch 2, after its search
    saved = full.xsam.state_dict()
    checkpoint = str(tmp_path / "full" / "checkpoint-6")
    assert os.path.isdir(checkpoint)

    start = AlphaAtStart()
    resumed = hf.train_hf(
        cfg,
        str(tmp_path / "resumed"),
        xsam=xsam,
        resume_from_checkpoint=checkpoint,
        callbacks=[start],
    )
    history = [(h["step"], h["alpha"]) for h in full.xsam.search_history]
    assert [s for s, _ in history] == [0, 4]
    assert history[1][1] != xsam["alpha"]  # else this test could not tell a restored alpha
    assert (start.alpha, start.step_count) == (history[1][1], 6)
    assert [(h["step"], h["alpha"]) for h in resumed.xsam.search_history] == history
    assert resumed.xsam.step_count == checkpoint_state.read(saved)["step_count"] == 8
    assert_same_parameters(resumed.model, full.model, 0.0, 0.0)


def test_fp16_is_refused(hf, tmp_path):
    cfg = hf.HFRecipeConfig()
    args = hf.make_args(cfg, str(tmp_path), fp16=True)
    with pytest.raises(ValueError, match="fp16"):
        hf.XSAMTrainer(model=hf.make_model(cfg), args=args, train_dataset=hf.make_dataset(cfg))


def test_misuse_is_loud(hf, tmp_path):
    cfg = hf.HFRecipeConfig()
    model, args, data = hf.make_model(cfg), hf.make_args(cfg, str(tmp_path)), hf.make_dataset(cfg)
    for key in ("max_grad_norm", "search_interval"):
        with pytest.raises(ValueError, match=key):
            hf.XSAMTrainer(model=model, args=args, train_dataset=data, xsam={key: 1})
    plain = XSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="creates its optimizer"):
        hf.XSAMTrainer(model=model, args=args, train_dataset=data, optimizers=(plain, None))
    trainer = hf.XSAMTrainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"params": [], "lr": 0.1}),
    )
    with pytest.raises(ValueError, match="own parameter groups"):
        trainer.create_optimizer()
    opt = hf.TrainerXSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="none is pending"):
        opt.step()
    with pytest.raises(TypeError, match="update_alpha"):
        opt.step(update_alpha=True)
