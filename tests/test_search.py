"""Alpha search: strategies, batched evaluation, schedule, search log, plots, diagnostic."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from conftest import criterion, make_batches, make_cnn_bn, make_mlp

import xsam_fast
from xsam_fast.coefficients import alpha_grid
from xsam_fast.search import STRATEGIES, ModelLoss, coarse_search, grid_search

GRID = alpha_grid(2.0, 0.1)
FAST = ["fibonacci", "coarse"]
#: most forward passes a fast strategy may use on the 21-point grid
MAX_PASSES = {"fibonacci": 8, "coarse": 10}  # fibonacci: <= 40% of 21


def counting(curve):
    calls = []

    def evaluate(batch):
        calls.append(list(batch))
        return [curve(a) for a in batch]

    return evaluate, calls


def unimodal_curves(n=400, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        c, w = rng.uniform(-0.4, 2.4), rng.uniform(0.05, 3.0)
        shape = rng.choice(["abs", "square", "sqrt", "gauss"])
        if shape == "gauss":
            sd = rng.uniform(0.05, 1.0)
            yield lambda a, c=c, w=w, sd=sd: 1.0 + w * math.exp(-((a - c) ** 2) / (2 * sd * sd))
        else:
            e = {"abs": 1.0, "square": 2.0, "sqrt": 0.5}[shape]
            yield lambda a, c=c, w=w, e=e: 10.0 - w * abs(a - c) ** e


# ---------------------------------------------------------------- strategies
@pytest.mark.parametrize("strategy", FAST)
def test_fast_strategies_equal_grid_on_unimodal_curves(strategy):
    worst = 0
    for curve in unimodal_curves():
        ev_grid, _ = counting(curve)
        ev, calls = counting(curve)
        alpha_grid_, _ = grid_search(GRID, ev_grid)
        alpha, evaluated = STRATEGIES[strategy](GRID, ev)
        assert alpha == alpha_grid_
        passes = sum(len(c) for c in calls)
        assert passes == len(evaluated) == len({a for c in calls for a in c})  # no point twice
        assert [a for a, _ in evaluated] == sorted(a for a, _ in evaluated)
        worst = max(worst, passes)
    assert worst <= MAX_PASSES[strategy], worst
    if strategy == "fibonacci":
        assert worst <= 0.4 * len(GRID)


@pytest.mark.parametrize("strategy", FAST)
@pytest.mark.parametrize("alpha_max,delta", [(1.0, 0.25), (0.3, 0.1), (2.0, 0.05), (3.0, 0.1)])
def test_fast_strategies_other_grids(strategy, alpha_max, delta):
    alphas = alpha_grid(alpha_max, delta)
    for curve in unimodal_curves(100, seed=1):
        assert (
            STRATEGIES[strategy](alphas, counting(curve)[0])[0]
            == grid_search(alphas, counting(curve)[0])[0]
        )


def test_coarse_finds_the_global_bump_that_fibonacci_misses():
    def curve(a):  # broad bump at 0.3, higher narrow bump at 1.6
        return (
            1.0 + 0.6 * math.exp(-((a - 0.3) ** 2) / 0.5) + 0.9 * math.exp(-((a - 1.6) ** 2) / 0.05)
        )

    best = grid_search(GRID, counting(curve)[0])[0]
    assert abs(best - 1.6) < 1e-9
    assert STRATEGIES["fibonacci"](GRID, counting(curve)[0])[0] != best  # a local maximum
    assert coarse_search(GRID, counting(curve)[0])[0] == best


def test_coarse_evaluates_the_coarse_grid_in_one_call():
    ev, calls = counting(lambda a: 1 + a * (2 - a))
    coarse_search(GRID, ev)
    assert len(calls[0]) == 6 and all(len(c) == 1 for c in calls[1:])


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_live_search_counts_forward_passes(strategy):
    model = make_mlp()
    x, y = make_batches("mlp", 1)[0]
    calls = []

    def search_loss():
        calls.append(1)
        return criterion(model(x), y)

    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model, search=strategy)
    _step(opt, model, x, y, search_loss=search_loss, update_alpha=True)
    rec = opt.search_history[-1]
    assert rec["forwards"] == rec["evaluations"] == len(calls) == len(opt.search_curve)
    assert rec["strategy"] == strategy and rec["alpha"] == opt.alpha
    assert {"psi", "grad_norm", "d_norm", "time_s"} <= rec.keys()
    assert math.isclose(rec["psi"], opt.stats()["psi"])


# ---------------------------------------------------------------- batched search
def _step(opt, model, x, y, **kw):
    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure, **kw)


def _run(dtype, search_batch, api, model_fn=make_cnn_bn, name="cnn_bn", search="grid"):
    model = model_fn(dtype)
    opt = xsam_fast.XSAM(
        model.parameters(),
        lr=0.1,
        momentum=0.9,
        model=model,
        search_batch=search_batch,
        search=search,
    )
    for x, y in make_batches(name, 3, dtype):
        if api == "closure":
            _step(
                opt, model, x, y, search_loss=ModelLoss(model, x, y, criterion), update_alpha=True
            )
        else:  # the authors' call sequence: second_step builds the ModelLoss
            from conftest import authors_step

            authors_step(opt, model, x, y, steps=1, update_alpha=True)
    return opt, model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("api", ["closure", "authors"])
@pytest.mark.parametrize("k", [2, 5, 21])
def test_batched_search_equals_sequential_on_bn_model(dtype, api, k):
    seq_opt, seq_model = _run(dtype, 1, api)
    bat_opt, bat_model = _run(dtype, k, api)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for s, b in zip(seq_opt.search_history, bat_opt.search_history):
        assert s["alpha"] == b["alpha"]
        assert [a for a, _ in s["curve"]] == [a for a, _ in b["curve"]]
        torch.testing.assert_close(
            torch.tensor([v for _, v in b["curve"]], dtype=torch.float64),
            torch.tensor([v for _, v in s["curve"]], dtype=torch.float64),
            atol=tol,
            rtol=tol,
        )
        assert s["forwards"] == 21 and b["forwards"] == math.ceil(21 / k)
    for a, e in zip(bat_model.state_dict().values(), seq_model.state_dict().values()):
        torch.testing.assert_close(a, e, atol=tol, rtol=tol)  # params and BN running stats


def test_batched_search_leaves_bn_running_stats_alone():
    model = make_cnn_bn()
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model, search_batch=7)
    x, y = make_batches("cnn_bn", 1)[0]
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    _step(opt, model, x, y, search_loss=ModelLoss(model, x, y, criterion), update_alpha=True)
    # only the first forward pass of the step moves them (momentum 0.1, one batch)
    expected = copy.deepcopy(make_cnn_bn())
    expected(x)
    torch.testing.assert_close(bn.running_mean, expected[1].running_mean)
    torch.testing.assert_close(bn.running_var, expected[1].running_var)
    assert int(bn.num_batches_tracked) == before[2] + 1
    assert bn.momentum == 0.1 and isinstance(bn.running_mean, torch.Tensor)


def test_batched_fast_strategy_and_opaque_callable_fallback():
    opt_c, _ = _run(torch.float64, 6, "closure", search="coarse")
    opt_s, _ = _run(torch.float64, 1, "closure", search="coarse")
    assert [r["alpha"] for r in opt_c.search_history] == [r["alpha"] for r in opt_s.search_history]
    assert all(r["forwards"] < r["evaluations"] for r in opt_c.search_history)
    # an opaque callable cannot be vectorised: one point per forward, same result
    model = make_cnn_bn()
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model, search_batch=7)
    x, y = make_batches("cnn_bn", 1)[0]
    _step(opt, model, x, y, search_loss=lambda: criterion(model(x), y), update_alpha=True)
    assert opt.search_history[-1]["forwards"] == 21


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_search_batch_validated(bad):
    with pytest.raises(ValueError, match="search_batch"):
        xsam_fast.XSAM(make_mlp().parameters(), lr=0.1, search_batch=bad)


def test_model_loss_batched_matches_calls():
    model = make_cnn_bn()
    x, y = make_batches("cnn_bn", 1)[0]
    loss = ModelLoss(model, x, y, criterion)
    params = dict(model.named_parameters())
    stacked = {n: torch.stack([p.detach(), p.detach() * 0.5]) for n, p in params.items()}
    out = loss.batched(stacked)
    first = loss().detach()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    second = loss().detach()
    torch.testing.assert_close(out, torch.stack([first, second]))


# ---------------------------------------------------------------- schedule
def test_request_search_next_step_only():
    model = make_mlp()
    batches = make_batches("mlp", 4)
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model)
    sl = lambda x, y: ModelLoss(model, x, y, criterion)  # noqa: E731
    _step(opt, model, *batches[0], search_loss=sl(*batches[0]))
    assert opt.search_history == []
    opt.request_search()
    _step(
        opt, model, *batches[1], search_loss=sl(*batches[1]), update_alpha=False
    )  # the request wins
    _step(opt, model, *batches[2], search_loss=sl(*batches[2]))  # consumed
    assert [h["step"] for h in opt.search_history] == [1]
    opt.request_search()
    with pytest.raises(ValueError, match="request_search"):
        _step(opt, model, *batches[3])  # no search_loss to search with
    x, y = batches[3]
    from conftest import authors_step

    authors_step(opt, model, x, y, steps=1, update_alpha=False)  # authors' API honours it too
    assert [h["step"] for h in opt.search_history] == [1, 3]


def test_once_per_epoch_and_every_n_steps():
    model = make_mlp()
    batches = make_batches("mlp", 4)
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model)
    for epoch in range(3):
        opt.request_search()
        for x, y in batches:
            _step(opt, model, x, y, search_loss=ModelLoss(model, x, y, criterion))
    assert [h["step"] for h in opt.search_history] == [0, 4, 8]
    model2 = make_mlp()
    opt2 = xsam_fast.XSAM(model2.parameters(), lr=0.1, model=model2, search_interval=3)
    for i in range(7):
        x, y = batches[i % 4]
        _step(opt2, model2, x, y, search_loss=ModelLoss(model2, x, y, criterion))
    assert [h["step"] for h in opt2.search_history] == [0, 3, 6]


# ---------------------------------------------------------------- log and plots
def test_search_log_hook_and_plot(tmp_path):
    from xsam_fast.plotting import plot_search_log
    from xsam_fast.searchlog import SearchLogger, is_search_log, read_search_log

    model = make_cnn_bn()
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model, search_interval=2)
    seen = []
    handle = opt.register_search_hook(lambda o, r: seen.append((o, r)))
    path = tmp_path / "logs" / "search.jsonl"
    with SearchLogger(path, run="t") as logger:
        opt.register_search_hook(logger)
        for i, (x, y) in enumerate(make_batches("cnn_bn", 5)):
            logger.context["epoch"] = i // 2
            _step(opt, model, x, y, search_loss=ModelLoss(model, x, y, criterion))
            if i == 2:
                handle.remove()
    records = read_search_log(path)
    assert is_search_log(path)
    assert [r["step"] for r in records] == [0, 2, 4] and len(seen) == 2 and seen[0][0] is opt
    assert [r["epoch"] for r in records] == [0, 1, 2] and all(r["run"] == "t" for r in records)
    for r, h in zip(records, opt.search_history):
        assert r["alpha"] == h["alpha"] and r["curve"] == [list(p) for p in h["curve"]]
        assert r["psi"] == h["psi"]
    png = plot_search_log(path, tmp_path / "search.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no search records"):
        bad = tmp_path / "empty.jsonl"
        bad.write_text('{"kind": "epoch"}\n')
        read_search_log(bad)


# ---------------------------------------------------------------- diagnostic
def test_diagnostic_on_tiny_model(tmp_path):
    from xsam_fast.diagnostics import diagnose_training, format_table, plot_directions
    from xsam_fast.searchlog import read_search_log

    model = make_cnn_bn(torch.float32)
    batches = make_batches("cnn_bn", 3, torch.float32)
    rows = diagnose_training(
        model,
        lambda epoch: batches,
        epochs=3,
        at=(1, 3),
        lr=0.1,
        momentum=0.9,
        rho=0.15,
        log_path=tmp_path / "s.jsonl",
    )
    assert [r["epoch"] for r in rows] == [1, 3] and [r["step"] for r in rows] == [0, 6]
    for r in rows:
        curve = dict(r["curve"])
        assert len(curve) == 21
        assert r["loss_v0"] == curve[0.0] and r["loss_v1"] == curve[1.0]
        assert r["loss_vstar"] == max(curve.values()) == curve[r["alpha"]]
        assert r["loss_vstar"] >= max(r["loss_v0"], r["loss_v1"])
    assert len(read_search_log(tmp_path / "s.jsonl")) == 3  # one search per epoch
    table = format_table(rows)
    assert table.count("\n") == 3 and "L(v1) [SAM]" in table
    with open(plot_directions(rows, tmp_path / "d.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_cli_plot_draws_a_search_log(tmp_path, capsys):
    from xsam_fast import cli
    from xsam_fast.searchlog import SearchLogger

    model = make_mlp()
    opt = xsam_fast.XSAM(model.parameters(), lr=0.1, model=model, search="coarse")
    with SearchLogger(tmp_path / "search.jsonl") as logger:
        opt.register_search_hook(logger)
        for x, y in make_batches("mlp", 2):
            _step(
                opt, model, x, y, search_loss=ModelLoss(model, x, y, criterion), update_alpha=True
            )
    assert cli.main(["plot", str(tmp_path / "search.jsonl")]) == 0
    assert (tmp_path / "search.png").stat().st_size > 1000
    assert "search.png" in capsys.readouterr().out
    args = cli.build_parser().parse_args(["diagnose", "--epochs", "2", "--at", "1,2"])
    assert (args.command, args.epochs, args.at) == ("diagnose", 2, [1, 2])
