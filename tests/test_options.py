"""XSAM's training options: ``interval``, per-group ``rho``/``rho_max``, ``max_grad_norm``.

Each is checked against the float64 re-derivation (``tests/xsam_float64.py``) or
an explicit computation with torch's own pieces, on the reference and the C++
CPU backends.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os

import pytest
import torch

import xsam_fast
from xsam_fast import checkpoint
from conftest import (
    TOLERANCES,
    assert_params_close,
    closure_step,
    criterion,
    float64_copy,
    make_batches,
    make_cnn_bn,
    make_mlp,
    params_of,
)
from xsam_float64 import Float64XSAM
from xsam_fast import XSAM

BACKENDS = [
    pytest.param("reference"),
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            "cpu" not in xsam_fast.available_backends(),
            reason=f"cpu backend unavailable: {xsam_fast.backend_status().get('cpu')}",
        ),
    ),
]
ATOL, RTOL = TOLERANCES[torch.float64]

#: base optimizer: (torch class, its kwargs, the float64 re-derivation's kwargs)
BASES = {
    "sgd-mom-wd": (
        torch.optim.SGD,
        dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
        dict(base="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2),
    ),
    "adamw": (
        torch.optim.AdamW,
        dict(lr=0.01, weight_decay=1e-2),
        dict(base="adamw", lr=0.01, weight_decay=1e-2),
    ),
}


class CountingClosure:
    """A closure over one batch that counts its calls."""

    def __init__(self, opt, model, x, y) -> None:
        self.opt, self.model, self.x, self.y, self.calls = opt, model, x, y, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        self.opt.zero_grad()
        loss = criterion(self.model(self.x), self.y)
        loss.backward()
        return loss


def _calls_per_step(opt, model, batches) -> list[int]:
    counts = []
    for x, y in batches:
        closure = CountingClosure(opt, model, x, y)
        opt.step(closure)
        counts.append(closure.calls)
    return counts


# ------------------------------------------------------------------ interval
def test_interval_closure_calls_follow_the_phase(mlp64):
    """interval=3, steps=2: a full step (3 closure calls) at calls 0, 3, 6, one call between."""
    opt = XSAM(
        mlp64.parameters(), torch.optim.SGD, lr=0.1, steps=2, interval=3, backend="reference"
    )
    counts = _calls_per_step(opt, mlp64, make_batches("mlp", 8))
    assert counts == [3, 1, 1, 3, 1, 1, 3, 1]
    assert (opt.step_count, opt.base_steps) == (3, 5)


# Adam on the CNN is left out: the conv bias before BatchNorm has a gradient at rounding
# level, which Adam's normalisation blows up to a 1e-9 relative difference.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "model_name,base", [("mlp", "sgd-mom-wd"), ("mlp", "adamw"), ("cnn_bn", "sgd-mom-wd")]
)
def test_interval_trajectory_matches_float64(model_name, base, backend):
    """Full XSAM steps and plain base steps (on the plain gradient) in the interval's order."""
    model = make_mlp() if model_name == "mlp" else make_cnn_bn()
    model64 = float64_copy(model)
    cls, kw, ref_kw = BASES[base]
    opt = XSAM(
        model.parameters(), cls, rho=0.3, steps=2, interval=3, backend=backend, model=model, **kw
    )
    ref = Float64XSAM(model64, rho=0.3, steps=2, **ref_kw)
    for n, (x, y) in enumerate(make_batches(model_name, 7)):
        closure = CountingClosure(opt, model, x, y)
        opt.step(closure)
        if n % 3 == 0:
            ref.step(lambda: criterion(model64(x), y))
        else:
            assert closure.calls == 1
            ref.plain_step(lambda: criterion(model64(x), y))
        assert_params_close(params_of(model), params_of(model64), ATOL, RTOL, f"call {n}")
    for b, b64 in zip(model.buffers(), model64.buffers()):  # BN statistics too
        torch.testing.assert_close(b.double(), b64.double(), atol=ATOL, rtol=RTOL)


def test_interval_plain_step_is_the_base_step(mlp64):
    """A plain step is the base optimizer's step on the closure's gradient (run by the
    fused kernel, whose separate roundings differ from torch's fused multiply-adds by
    an ulp at most)."""
    twin = float64_copy(mlp64)
    opt = XSAM(
        mlp64.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, interval=2, backend="reference"
    )
    batches = make_batches("mlp", 2)
    closure_step(opt, mlp64, *batches[0])  # call 0: full step (momentum buffers created)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    twin.load_state_dict(mlp64.state_dict())
    sgd.load_state_dict(copy.deepcopy(opt.base_optimizer.state_dict()))  # no shared buffers
    x, y = batches[1]
    closure_step(opt, mlp64, x, y)  # call 1: plain
    sgd.zero_grad()
    criterion(twin(x), y).backward()
    sgd.step()
    for p, q in zip(mlp64.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("cut", [4, 5])
def test_interval_state_dict_resume_keeps_the_phase(cut):
    """Saved after ``cut`` calls and reloaded (through torch.save, on CPU): the same
    closure-call pattern and bit-identical parameters as an uninterrupted run."""
    batches = make_batches("mlp", 10)

    def build(model):
        return XSAM(
            model.parameters(),
            torch.optim.SGD,
            lr=0.1,
            momentum=0.9,
            steps=2,
            interval=3,
            backend="reference",
        )

    model_a = make_mlp()
    opt_a = build(model_a)
    counts_a = _calls_per_step(opt_a, model_a, batches)

    model_b = make_mlp()
    opt_b = build(model_b)
    counts_b = _calls_per_step(opt_b, model_b, batches[:cut])
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=False)
    assert checkpoint.read(saved["opt"])["base_steps"] == opt_b.base_steps == cut - (cut + 2) // 3
    model_c = make_mlp(seed=1)
    model_c.load_state_dict(saved["model"])
    opt_c = build(model_c)
    opt_c.load_state_dict(saved["opt"])
    counts_c = _calls_per_step(opt_c, model_c, batches[cut:])
    assert counts_b + counts_c == counts_a
    for p, q in zip(model_c.parameters(), model_a.parameters()):
        assert torch.equal(p, q)


def test_request_search_waits_for_the_next_full_step(mlp64):
    """request_search() before a plain step: the search runs at the next full step."""
    opt = XSAM(
        mlp64.parameters(),
        torch.optim.SGD,
        lr=0.1,
        interval=2,
        alpha_delta=0.5,
        backend="reference",
    )
    (x0, y0), (x1, y1), (x2, y2) = make_batches("mlp", 3)
    closure_step(opt, mlp64, x0, y0)  # call 0: full, no search
    opt.request_search()
    closure_step(opt, mlp64, x1, y1)  # call 1: plain
    assert opt.search_history == [] and opt.base_steps == 1
    closure_step(opt, mlp64, x2, y2)  # call 2: full, searches
    assert len(opt.search_history) == 1 and opt.search_history[0]["step"] == 1


# ------------------------------------------------------------ per-group rho
def _two_groups(model, lr=0.1):
    w1, b1, w2, b2 = model.parameters()
    return [
        dict(params=[w1, b1], rho=0.1, rho_max=0.5),
        dict(params=[w2, b2], rho=0.4),
    ]  # rho_max: the default, 2 * rho here


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_group_rho_and_rho_max_match_float64(backend, mlp64, batches64):
    """Two groups: each ascends rho_g/steps along the GLOBAL normalised gradient and the
    search evaluates each at its own rho_max; angle and norms are global."""
    model64 = float64_copy(mlp64)
    opt = XSAM(_two_groups(mlp64), torch.optim.SGD, steps=2, lr=0.1, momentum=0.9, backend=backend)
    ref = Float64XSAM(
        model64,
        rho=0.0,
        steps=2,
        base="sgd",
        lr=0.1,
        momentum=0.9,
        rhos=[0.1, 0.1, 0.4, 0.4],
        rho_maxes=[0.5, 0.5, 0.8, 0.8],
    )
    for n, (x, y) in enumerate(batches64):
        closure_step(opt, mlp64, x, y, update_alpha=True)
        ref.step(lambda: criterion(model64(x), y), search=True)
        assert opt.alpha == ref.alpha, n
        got = [loss for _, loss in opt.search_curve]
        want = [loss for _, loss in ref.curve]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=ATOL, rtol=RTOL)
        assert_params_close(params_of(mlp64), params_of(model64), ATOL, RTOL, f"step {n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_changing_group_rho_between_steps_takes_effect(backend, mlp64, batches64):
    """group['rho'] and group['rho_max'] are read at every step (as a scheduler would set them)."""
    model64 = float64_copy(mlp64)
    opt = XSAM(_two_groups(mlp64), torch.optim.SGD, lr=0.1, backend=backend)
    ref = Float64XSAM(
        model64,
        rho=0.0,
        base="sgd",
        lr=0.1,
        rhos=[0.1, 0.1, 0.4, 0.4],
        rho_maxes=[0.5, 0.5, 0.8, 0.8],
    )
    schedule = [
        (0.1, 0.4, 0.5, None),
        (0.3, 0.05, 0.2, 0.7),
        (0.0, 0.2, 0.1, None),
        (0.25, 0.25, 0.6, 0.6),
    ]
    for n, ((x, y), (ra, rb, ma, mb)) in enumerate(zip(batches64, schedule)):
        g0, g1 = opt.param_groups
        g0["rho"], g1["rho"], g0["rho_max"], g1["rho_max"] = ra, rb, ma, mb
        ref.rhos = [ra, ra, rb, rb]
        ref.rho_maxes = [ma, ma] + [2 * rb if mb is None else mb] * 2
        closure_step(opt, mlp64, x, y, update_alpha=True)
        ref.step(lambda: criterion(model64(x), y), search=True)
        assert opt.alpha == ref.alpha, n
        assert_params_close(params_of(mlp64), params_of(model64), ATOL, RTOL, f"step {n}")


def test_group_rho_changes_the_ascent(mlp64):
    """The ascent displacement of a group is rho_g/steps times its share of the global
    normalised gradient: ||d||^2 = sum_g (rho_g ||g_g|| / ||g||)^2."""
    opt = XSAM(_two_groups(mlp64), torch.optim.SGD, lr=0.1, backend="reference")
    x, y = make_batches("mlp", 1)[0]
    opt.zero_grad()
    criterion(mlp64(x), y).backward()
    grads = [p.grad.detach().clone() for p in mlp64.parameters()]
    total = torch.cat([g.flatten() for g in grads]).norm()
    share = [
        torch.cat([g.flatten() for g in grads[:2]]).norm() / total,
        torch.cat([g.flatten() for g in grads[2:]]).norm() / total,
    ]
    opt.first_step(0)
    opt.zero_grad()
    criterion(mlp64(x), y).backward()
    opt.second_step()
    d_norm = opt.stats()["d_norm"]
    assert d_norm == pytest.approx(
        float(((0.1 * share[0]) ** 2 + (0.4 * share[1]) ** 2).sqrt()), rel=1e-12
    )


# ---------------------------------------------------------------- clipping
def _clip_then(cls, max_norm):
    """``cls`` whose step() first clips the gradients with torch.nn.utils.clip_grad_norm_."""

    class ClipThenStep(cls):
        norms: list[float] = []

        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            self.norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
            return super().step(closure)

    return ClipThenStep


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", list(BASES))
def test_max_grad_norm_equals_clip_grad_norm(base, backend, mlp64, batches64):
    """Fused clipping of G == G written into .grad (fuse_base_update=False), then
    clip_grad_norm_, then the base step; and == the float64 re-derivation."""
    cls, kw, ref_kw = BASES[base]
    max_norm = 0.05
    model_e, model_u, model64 = float64_copy(mlp64), float64_copy(mlp64), float64_copy(mlp64)
    fused = XSAM(
        mlp64.parameters(),
        cls,
        rho=0.2,
        steps=2,
        alpha=0.6,
        max_grad_norm=max_norm,
        backend=backend,
        **kw,
    )
    explicit_cls = _clip_then(cls, max_norm)
    explicit = XSAM(
        model_e.parameters(),
        explicit_cls,
        rho=0.2,
        steps=2,
        alpha=0.6,
        fuse_base_update=False,
        backend=backend,
        **kw,
    )
    unclipped = XSAM(model_u.parameters(), cls, rho=0.2, steps=2, alpha=0.6, backend=backend, **kw)
    ref = Float64XSAM(model64, rho=0.2, steps=2, alpha=0.6, max_grad_norm=max_norm, **ref_kw)
    for n, (x, y) in enumerate(batches64):
        closure_step(fused, mlp64, x, y)
        closure_step(explicit, model_e, x, y)
        closure_step(unclipped, model_u, x, y)
        ref.step(lambda: criterion(model64(x), y))
        assert explicit_cls.norms[-1] > 2 * max_norm  # the threshold does clip here
        assert_params_close(params_of(mlp64), params_of(model_e), ATOL, RTOL, f"explicit {n}")
        assert_params_close(params_of(mlp64), params_of(model64), ATOL, RTOL, f"float64 {n}")
    gap = max(float((p - q).abs().max()) for p, q in zip(params_of(mlp64), params_of(model_u)))
    assert gap > 1e-4  # clipping changed the trajectory


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_above_the_norm_changes_nothing(backend, mlp64, batches64):
    twin = float64_copy(mlp64)
    opt = XSAM(
        mlp64.parameters(),
        torch.optim.SGD,
        lr=0.1,
        momentum=0.9,
        max_grad_norm=1e6,
        backend=backend,
    )
    plain = XSAM(twin.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, backend=backend)
    for x, y in batches64:
        closure_step(opt, mlp64, x, y)
        closure_step(plain, twin, x, y)
        assert opt.stats()["grad_norm"] < 1e6
    for p, q in zip(mlp64.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_bounds_the_update(backend, mlp64, batches64):
    """Plain SGD: each update is -lr * clipped G, so its length is at most lr * max_grad_norm
    (and equal to it up to the 1e-6 of the clip factor when G is longer)."""
    lr, max_norm = 0.5, 0.02
    opt = XSAM(
        mlp64.parameters(),
        torch.optim.SGD,
        lr=lr,
        max_grad_norm=max_norm,
        alpha=1.4,
        backend=backend,
    )
    for x, y in batches64:
        before = params_of(mlp64)
        closure_step(opt, mlp64, x, y)
        step = torch.cat([(p - b).flatten() for p, b in zip(params_of(mlp64), before)]).norm()
        g_norm = opt.stats()["grad_norm"]
        assert g_norm > max_norm
        assert float(step) <= lr * max_norm * (1 + 1e-12)
        assert float(step) == pytest.approx(lr * max_norm * g_norm / (g_norm + 1e-6), rel=1e-9)


# ------------------------------------------------------------ the CLI and the benchmark
def test_train_cli_interval(tmp_path):
    """--interval: the table names it, the log records it, XSAM still searches every epoch
    (at the epoch's first full step, also when the epoch starts with a plain step)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    from xsam_fast.cli import main
    from xsam_fast.train.log import read_log

    out = str(tmp_path / "out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # 6 batches per epoch: epoch 2 starts at call 6
        rc = main(
            [
                "train",
                "--epochs",
                "2",
                "--seeds",
                "1",
                "--bs",
                "256",
                "--width",
                "4",
                "--alpha_max",
                "1",
                "--alpha_delta",
                "0.5",
                "--methods",
                "xsam",
                "--interval",
                "4",
                "--threads",
                str(torch.get_num_threads()),
                "--no_progress",
                "--out",
                out,
            ]
        )
    text = stdout.getvalue()
    assert rc == 0, text
    assert "| XSAM (interval 4) " in text
    assert "every 4th batch and a plain SGD step" in text
    config, records = read_log(os.path.join(out, "log.jsonl"))
    assert config["interval"] == 4
    assert [(r["method"], r["epoch"]) for r in records] == [("xsam", 1), ("xsam", 2)]
    assert all(r["search_curve"] is not None for r in records)


def test_interval_benchmark_writes_its_table(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), ".."))
    from benchmarks import interval_tradeoff

    out = tmp_path / "INTERVAL.md"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = interval_tradeoff.main(
            [
                "--seeds",
                "2",
                "--epochs",
                "1",
                "--width",
                "4",
                "--bs",
                "256",
                "--methods",
                "xsam",
                "--intervals",
                "1,3",
                "--threads",
                str(torch.get_num_threads()),  # as it was
                "--out",
                str(out),
            ]
        )
    assert rc == 0
    text = out.read_text()
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and "±" in line and not line.startswith("| run")
    ]
    assert [r.split("|")[1].strip() for r in rows] == ["SGD", "XSAM interval 1", "XSAM interval 3"]
    # passes per batch: 6 batches, interval 3 -> full steps at calls 0 and 3: (2*2 + 4) / 6
    assert rows[0].split("|")[-2].strip() == "1.00" and rows[1].split("|")[-2].strip() == "2.00"
    assert rows[2].split("|")[-2].strip() == f"{8 / 6:.2f}"
    assert "Measured " in text and "torch " + torch.__version__ in text


def test_update_alpha_on_a_plain_step_waits_for_the_next_full_step(mlp64):
    opt = XSAM(mlp64.parameters(), torch.optim.SGD, lr=0.1, interval=2, backend="reference")
    x, y = make_batches("mlp", 1)[0]
    loss = lambda: criterion(mlp64(x), y)  # noqa: E731
    closure_step(opt, mlp64, x, y)  # call 0: full
    opt.step(lambda: loss().backward(), search_loss=loss, update_alpha=True)  # call 1: plain
    assert opt.search_history == [] and opt._search_requested
    opt.step(lambda: loss().backward(), search_loss=loss)  # call 2: full, searches
    assert len(opt.search_history) == 1 and not opt._search_requested
