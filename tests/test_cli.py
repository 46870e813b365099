"""The ``xsam-fast`` command: train (tiny settings), plot, bench dispatch, refusals, help.

CIFAR (reading, preset, end to end) is in ``test_train_cifar.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from xsam_fast import coefficients  # noqa: E402
from xsam_fast.cli import main  # noqa: E402
from xsam_fast.train.log import CSV_FIELDS, read_log  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALPHA_MAX, ALPHA_DELTA = 1.0, 0.25  # a 5-point grid: 0, .25, .5, .75, 1


def _tiny(out: str, *extra: str) -> list[str]:
    # one thread: the fastest for these tiny batches, by far on a busy machine
    return [
        "train",
        "--epochs",
        "2",
        "--seeds",
        "2",
        "--bs",
        "256",
        "--width",
        "4",
        "--alpha_max",
        str(ALPHA_MAX),
        "--alpha_delta",
        str(ALPHA_DELTA),
        "--threads",
        "1",
        "--no_progress",
        "--out",
        out,
        *extra,
    ]


@contextlib.contextmanager
def _threads_kept():
    """main() sets torch's thread count for the whole process: restore it afterwards."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _keep_threads():
    with _threads_kept():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny job (3 methods x 2 seeds x 2 epochs): (exit code, stdout, out dir)."""
    out = str(tmp_path_factory.mktemp("train") / "out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), _threads_kept():
        rc = main(_tiny(out))
    return rc, stdout.getvalue(), out


def test_train_prints_the_table(trained):
    rc, stdout, _ = trained
    assert rc == 0, stdout
    assert "test acc % (mean ± std)" in stdout and "time vs SAM" in stdout
    rows = {
        line.split("|")[1].strip(): line
        for line in stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| method", "| paired"))
    }
    assert set(rows) == {"SGD", "SAM", "XSAM", "XSAM - SAM", "SAM - SGD"}
    assert "%" in rows["XSAM"].split("|")[7]  # XSAM's extra time over SAM
    assert rows["SAM"].split("|")[6].strip() == "0/24"  # skipped / steps: 2 seeds x 2 epochs x 6
    assert "40% of the training labels wrong" in stdout  # the default task
    assert "over 2 seeds" in stdout and "wall time" in stdout
    assert "XSAM alpha* per epoch" in stdout and "95% interval (t)" in stdout
    # 2 seeds: separated only beyond t(0.975, 1), not beyond 2
    assert "t = t(0.975, 1) = 12.71" in stdout and "interval excludes 0" in stdout
    assert "> 2 separates" not in stdout


def test_train_summary_json_matches_the_log(trained):
    """The paired differences in summary.json are the seed-paired final accuracies of the log."""
    _, _, out = trained
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    _, records = read_log(os.path.join(out, "log.jsonl"))
    final = {(r["method"], r["seed"]): 100 * r["test_acc"] for r in records if r["epoch"] == 2}
    diffs = {(d["a"], d["b"]): d for d in summary["differences"]}
    assert set(diffs) == {("xsam", "sam"), ("sam", "sgd")}
    for (a, b), d in diffs.items():
        per_seed = [final[a, s] - final[b, s] for s in (0, 1)]
        assert d["mean"] == pytest.approx(sum(per_seed) / 2)
        assert d["n"] == 2 and d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert set(summary["alpha_per_epoch"]) == {"1", "2"}
    assert all(len(v) == 2 for v in summary["alpha_per_epoch"].values())
    assert summary["config"]["label_noise"] == 0.4
    assert summary["config"]["noisy_labels"] == round(0.4 * summary["config"]["n_train"])


def test_train_writes_log_csv_and_png(trained):
    _, _, out = trained
    with open(os.path.join(out, "training.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    config, records = read_log(os.path.join(out, "log.jsonl"))
    assert config["dataset"] == "digits" and config["epochs"] == 2
    assert len(records) == 3 * 2 * 2
    assert {(r["method"], r["seed"], r["epoch"]) for r in records} == {
        (m, s, e) for m in ("sgd", "sam", "xsam") for s in (0, 1) for e in (1, 2)
    }
    for r in records:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["epoch_time_s"] > 0
    with open(os.path.join(out, "metrics.csv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].split(",") == list(CSV_FIELDS) and len(lines) == 1 + len(records)


def test_alpha_values_are_on_the_grid(trained):
    _, records = read_log(os.path.join(trained[2], "log.jsonl"))
    grid = coefficients.alpha_grid(ALPHA_MAX, ALPHA_DELTA)
    for r in records:
        if r["method"] == "sgd":
            assert r["alpha"] is None and r["search_curve"] is None
        elif r["method"] == "sam":
            assert r["alpha"] == 1.0 and r["search_curve"] is None
        else:  # one search per epoch, every grid point evaluated, the first maximum chosen
            curve = r["search_curve"]
            assert [a for a, _ in curve] == pytest.approx(grid)
            assert min(abs(r["alpha"] - a) for a in grid) < 1e-9
            losses = [v for _, v in curve]
            assert r["alpha"] == pytest.approx(grid[losses.index(max(losses))])


def test_methods_share_init_batches_and_bn_statistics(tmp_path):
    """With lr=0 nothing moves the weights, so every method must see the same
    initialisation and batches (same train loss) and, since only the first forward
    pass of an XSAM step may update BatchNorm running statistics, end with the same
    eval-mode test loss as SGD."""
    out = str(tmp_path / "out")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(_tiny(out, "--lr", "0", "--epochs", "1", "--seeds", "1")) == 0
    _, records = read_log(os.path.join(out, "log.jsonl"))
    by_method = {r["method"]: r for r in records}
    for method in ("sam", "xsam"):
        for key in ("train_loss", "test_loss", "test_acc"):
            assert by_method[method][key] == pytest.approx(by_method["sgd"][key], rel=1e-6), key


def test_plot_redraws_from_the_log(trained, tmp_path, capsys):
    png = tmp_path / "again.png"
    assert main(["plot", os.path.join(trained[2], "log.jsonl"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in capsys.readouterr().out


def test_plot_of_a_missing_log_fails_clearly(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope.jsonl")]) != 0
    assert "nope.jsonl" in capsys.readouterr().err


def test_bench_dispatches_to_the_harness(monkeypatch):
    seen = []
    harness = types.ModuleType("benchmarks.bench_step")
    harness.main = lambda argv: seen.append(argv) or 0
    package = types.ModuleType("benchmarks")
    package.bench_step = harness
    monkeypatch.setitem(sys.modules, "benchmarks", package)
    monkeypatch.setitem(sys.modules, "benchmarks.bench_step", harness)
    assert main(["bench", "--sizes", "tiny", "--help"]) == 0
    assert seen == [["--sizes", "tiny", "--help"]]


def test_bench_without_a_checkout_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "benchmarks", None)
    assert main(["bench"]) != 0
    assert "source checkout" in capsys.readouterr().err


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: xsam-fast" in out and "train" in out and "plot" in out and "bench" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--methods", "sgd,adam"],
        ["--methods", "sam,sam"],
        ["--seeds", "0"],
        ["--epochs", "0"],
        ["--test_size", "0"],
        ["--test_size", "1"],
        ["--label_noise", "1"],
    ],
    ids=[
        "unknown-method",
        "duplicate-method",
        "zero-seeds",
        "zero-epochs",
        "no-test-set",
        "no-training-set",
        "all-labels-wrong",
    ],
)
def test_bad_train_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert f"error: argument {argv[0]}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "-0.1"),
        ("--lr", "fast"),
        ("--momentum", "-0.9"),
        ("--wd", "nan"),
        ("--rho", "-1"),
        ("--rho_max", "inf"),
        ("--eps", "-1e-12"),
        ("--alpha", "nan"),
        ("--alpha_max", "-2"),
        ("--alpha_delta", "0"),
        ("--alpha_delta", "-0.1"),
    ],
)
def test_non_finite_or_negative_numbers_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", f"{flag}={value}"])  # "=": -1e-12 alone would read as an option
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "must be a finite number >" in err and value in err


def test_zero_is_accepted_where_it_means_something():
    from xsam_fast.cli import build_parser

    args = build_parser().parse_args(
        ["train", *(x for f in ("--lr", "--momentum", "--wd", "--rho", "--eps") for x in (f, "0"))]
    )
    assert (args.lr, args.momentum, args.wd, args.rho, args.eps) == (0, 0, 0, 0, 0)
    assert build_parser().parse_args(["train"]).methods == ["sgd", "sam", "xsam"]


@pytest.mark.parametrize("argv", [["train"], ["plot"], ["diagnose"]], ids=lambda a: a[0])
def test_help_has_no_empty_or_repeated_defaults(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines rewrapped as one
    for glitch in ("(default: None)", "(default: False)", "(default: ["):
        assert glitch not in out
    if argv == ["train"]:
        assert "--epochs EPOCHS epochs of every run" in out
        assert "--mo MOMENTUM momentum of SGD" in out and "--eps EPS added to every norm" in out
        assert "(default: sgd,sam,xsam)" in out


def test_bench_help_from_an_editable_install_anywhere(monkeypatch, tmp_path, capsys):
    """``xsam-fast bench --help`` runs the harness of the checkout the package was installed
    from, whatever the working directory and sys.path."""
    from xsam_fast.cli import SOURCE_ROOT

    if not os.path.isfile(os.path.join(SOURCE_ROOT, "benchmarks", "bench_step.py")):
        pytest.skip("xsam_fast is not imported from a source checkout")
    monkeypatch.chdir(tmp_path)
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != SOURCE_ROOT]
    monkeypatch.setattr(sys, "path", path)
    for name in [m for m in sys.modules if m.split(".")[0] == "benchmarks"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "usage: python -m benchmarks.bench_step" in capsys.readouterr().out


def test_mo_is_an_alias_of_momentum():
    from xsam_fast.cli import build_parser

    args = build_parser().parse_args(["train", "--mo", "0.5"])
    assert args.momentum == 0.5


def test_python_m_xsam_fast_help():
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(
                None,
                [
                    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    os.environ.get("PYTHONPATH"),
                ],
            )
        ),
    )
    for argv in (["--help"], ["train", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "xsam_fast", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "usage: xsam-fast" in done.stdout
    assert "--rho_max" in done.stdout and "--is_dynamic" in done.stdout and "--seeds" in done.stdout


def test_summary_statistics_and_paired_time_ratio():
    from xsam_fast.train.report import format_table, summarize

    def rec(method, seed, epoch, acc, t, alpha=None):
        return dict(
            method=method,
            seed=seed,
            epoch=epoch,
            test_acc=acc,
            epoch_time_s=t,
            alpha=alpha,
            train_loss=0.5,
            images_per_s=100.0 / t,
            skipped_steps=0,
            steps=10,
        )

    records = []
    for seed, slow in ((0, 1.0), (1, 2.0), (2, 1.0)):  # seed 1 ran on a machine twice as busy
        records += [rec("sam", seed, e, 0.9, 0.10 * slow, 1.0) for e in (1, 2, 3)]
        records += [rec("xsam", seed, e, 0.8 + 0.1 * seed, 0.12 * slow, 0.5 * e) for e in (1, 2, 3)]
    records.append(rec("sam", 0, 4, 0.95, 50.0, 1.0))  # one epoch stretched by the load
    rows = {r["method"]: r for r in summarize(records)}
    assert rows["xsam"]["test_acc_mean"] == pytest.approx(0.9)
    assert rows["xsam"]["test_acc_std"] == pytest.approx(0.1)
    assert rows["sam"]["test_acc_mean"] == pytest.approx(
        (0.95 + 0.9 + 0.9) / 3
    )  # last epoch per seed
    assert rows["xsam"]["alpha_mean"] == pytest.approx(1.0)
    assert rows["xsam"]["extra_time_vs_sam_pct"] == pytest.approx(20.0)
    assert rows["sam"]["extra_time_vs_sam_pct"] is None
    table = format_table(list(rows.values()))
    assert "+20.0%" in table and "90.00 ± 10.00" in table


def test_an_existing_out_folder_is_refused_without_overwrite(trained, capsys):
    """A second job into the same --out must not touch the first one's results."""
    _, _, out = trained
    before = {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)}
    with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as f:
        log = f.read()
    rc = main(_tiny(out))
    err = capsys.readouterr().err
    assert rc == 2
    assert "already holds the results of an earlier run" in err and "--overwrite" in err
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)} == before
    with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as f:
        assert f.read() == log


def test_overwrite_replaces_an_earlier_run(tmp_path):
    out = str(tmp_path / "out")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(_tiny(out, "--epochs", "1", "--seeds", "1", "--methods", "sgd")) == 0
        assert (
            main(_tiny(out, "--epochs", "1", "--seeds", "1", "--methods", "sam", "--overwrite"))
            == 0
        )
    _, records = read_log(os.path.join(out, "log.jsonl"))
    assert {r["method"] for r in records} == {"sam"}


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_a_backend_that_cannot_run_is_refused_at_the_start(backend, tmp_path, capsys):
    import xsam_fast

    reason = xsam_fast.backend_status()[backend]
    if not reason:
        pytest.skip(f"the {backend} backend runs here")
    rc = main(_tiny(str(tmp_path / "out"), "--backend", backend))
    captured = capsys.readouterr()
    assert rc == 2
    assert f"--backend {backend} cannot run here: {reason}" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out").exists()


def test_a_diverged_job_is_loud_in_its_own_words(tmp_path, capsys):
    """A diverged job says so on stderr, flags its rows and exits with status 1; no raw
    Python warning escapes, and no alpha of a diverged epoch is printed."""
    out = str(tmp_path / "out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(_tiny(out, "--lr", "1e6", "--epochs", "1", "--seeds", "1"))
    captured = capsys.readouterr()
    assert rc == 1
    assert not caught, [str(w.message) for w in caught]
    assert "Warning" not in captured.err and "alpha* per epoch" not in captured.out
    assert all(line.startswith("xsam-fast train: ") for line in captured.err.splitlines())
    assert "error: training diverged" in captured.err
    for method in ("SGD", "SAM", "XSAM"):
        assert f"{method}: the training loss was not finite" in captured.err
    rows = {
        line.split("|")[1].strip(): line
        for line in captured.out.splitlines()
        if line.startswith("| ")
    }
    assert all("(diverged)" in rows[m] for m in ("SGD", "SAM", "XSAM"))
    xsam = rows["XSAM"]
    assert xsam.split("|")[5].strip() == "-"  # no mean alpha from diverged epochs


def test_skipped_steps_come_from_the_optimizer_stats(tmp_path, capsys, monkeypatch):
    """The table's skipped-steps column and the warning read stats()["skipped_steps"]."""
    from xsam_fast import XSAM

    stats = XSAM.stats
    monkeypatch.setattr(XSAM, "stats", lambda self: {**stats(self), "skipped_steps": 2})
    rc = main(_tiny(str(tmp_path / "out"), "--epochs", "1", "--seeds", "1"))
    captured = capsys.readouterr()
    assert rc == 0
    sam = next(line for line in captured.out.splitlines() if line.startswith("| SAM "))
    assert sam.split("|")[6].strip() == "2/6"
    assert "SAM: 2 of 6 steps skipped for a non-finite gradient" in captured.err


def test_threads_default_to_one_on_digits(tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = [a for a in _tiny(out, "--epochs", "1", "--seeds", "1", "--methods", "sgd")]
    i = argv.index("--threads")
    del argv[i : i + 2]
    torch.set_num_threads(2)
    assert main(argv) == 0
    assert "(1 thread)" in capsys.readouterr().out and torch.get_num_threads() == 1


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "results"
    file.write_text("not a folder")
    for out in (file, file / "sub"):
        rc = main(_tiny(str(out)))
        err = capsys.readouterr().err
        assert rc == 2 and "is a file, not a folder" in err and "Traceback" not in err
    assert file.read_text() == "not a folder"


def test_fp16_on_the_cpu_warns(tmp_path, capsys):
    file = tmp_path / "file"
    file.touch()  # refused before any work, after the warning
    assert main(_tiny(str(file), "--amp", "fp16", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "warning: --amp fp16 on the CPU is tens of times slower" in err and "bf16" in err


def test_stderr_not_a_terminal_gets_epoch_lines_not_bars(tmp_path, capsys):
    """Without --no_progress, captured (non-terminal) stderr gets no progress bar: the job
    prints one line per epoch instead, alphas without float noise."""
    argv = [a for a in _tiny(str(tmp_path / "out"), "--epochs", "2", "--seeds", "1")]
    argv.remove("--no_progress")
    assert main([*argv, "--methods", "sgd,xsam", "--alpha_delta", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\x1b" not in captured.err
    for method in ("sgd", "xsam"):
        for epoch in (1, 2):
            assert f"{method} seed 0 epoch {epoch}/2: train loss" in captured.out
    alphas = [
        line.split("  alpha ")[1].split()[0]
        for line in captured.out.splitlines()
        if line.startswith("xsam seed")
    ]
    assert len(alphas) == 2 and all(a == f"{float(a):g}" for a in alphas), alphas


def test_alphas_are_shown_as_the_grid_writes_them():
    from xsam_fast.diagnostics import format_table as diagnose_table
    from xsam_fast.train.report import format_alphas

    text = format_alphas({1: [0.30000000000000004, 0.25, 0.75], 2: [1.2000000000000002]})
    assert "(0.25..0.75)" in text and "2: 1.2" in text and "0000" not in text
    row = dict(epoch=1, step=0, loss_theta0=1.0, loss_v0=1.0, loss_v1=1.0, loss_vstar=1.0)
    assert "| 0.3 |" in diagnose_table([dict(row, alpha=0.30000000000000004, psi=0.1)])


def test_differences_footer_states_the_t_rule():
    """The footer's threshold is the interval's t quantile: |mean / SE| = 2.5 with 5 seeds
    is not separated (t(0.975, 4) = 2.78)."""
    from xsam_fast.train.report import format_differences
    from xsam_fast.train.stats import paired_difference

    diffs = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, SE sqrt(0.5): |mean / SE| = 4.24
    d = paired_difference("xsam", "sam", dict(enumerate(diffs)), dict.fromkeys(range(5), 0.0))
    text = format_differences([d])
    assert "over 5 seeds" in text and "t = t(0.975, 4) = 2.78" in text
    assert "separated when the interval excludes 0, i.e. when |mean / SE| > t" in text
    one = paired_difference("xsam", "sam", {0: 1.0}, {0: 0.0})
    assert "no interval" in format_differences([one])


def test_accuracy_axis_follows_the_data(trained, tmp_path, monkeypatch):
    """An epoch far below the others (here epoch 1) is inside the accuracy panel."""
    from xsam_fast.train import plot
    from xsam_fast.train.log import LogWriter

    config, records = read_log(os.path.join(trained[2], "log.jsonl"))
    records[0] = dict(records[0], test_acc=0.02)  # epoch 1 of the first run
    log = tmp_path / "log.jsonl"
    with LogWriter(log, config) as writer:
        for r in records:
            writer.epoch(r)
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path, dpi: figures.append(fig) or path)
    plot.plot_log(log, tmp_path / "training.png")
    low, high = figures[0].axes[0].get_ylim()
    assert 0.0 <= low < 2.0 and high > 100 * max(r["test_acc"] for r in records)


def test_diagnose_refuses_a_file_and_earlier_results(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["diagnose", "--out", str(file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    out = tmp_path / "diag"
    out.mkdir()
    (out / "search.jsonl").write_text("earlier\n")
    assert main(["diagnose", "--epochs", "1", "--at", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds the results of an earlier run" in err and "--overwrite" in err
    assert (out / "search.jsonl").read_text() == "earlier\n" and len(list(out.iterdir())) == 1
    argv = ["diagnose", "--epochs", "1", "--at", "1", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    assert (out / "search.jsonl").read_text() != "earlier\n"
    assert {p.name for p in out.iterdir()} == {"search.jsonl", "directions.md", "directions.png"}


@pytest.mark.parametrize("at", ["3", "1,7", "0", "x"])
def test_diagnose_at_outside_the_epochs_is_a_usage_error(at, tmp_path, capsys):
    out = tmp_path / "diag"
    try:
        rc = main(["diagnose", "--epochs", "2", "--at", at, "--out", str(out)])
    except SystemExit as exc:  # a malformed list is refused by argparse itself
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "xsam-fast diagnose: error: argument --at:" in err
    assert ("1..2" in err) == (at in ("3", "1,7")) and not out.exists()


def test_alpha_panel_leaves_out_diverged_epochs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xsam_fast.train.plot import _alphas

    records = [
        dict(method="xsam", seed=0, epoch=1, alpha=0.5, train_loss=1.0),
        dict(method="xsam", seed=0, epoch=2, alpha=2.0, train_loss=float("nan")),
        dict(method="xsam", seed=0, epoch=3, alpha=1.5, train_loss=0.5),
        dict(method="sam", seed=0, epoch=1, alpha=None, train_loss=1.0),
    ]
    fig, ax = plt.subplots()
    try:
        _alphas(ax, records, {"alpha_max": 3.0})
        (line,) = [a for a in ax.get_lines() if a.get_label() == "seed 0"]
        assert list(line.get_xdata()) == [1, 3] and list(line.get_ydata()) == [0.5, 1.5]
    finally:
        plt.close(fig)
