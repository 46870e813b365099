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
    [["--methods", "sgd,adam"], ["--methods", "sam,sam"], ["--seeds", "0"], ["--epochs", "0"]],
    ids=["unknown-method", "duplicate-method", "zero-seeds", "zero-epochs"],
)
def test_bad_train_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


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


def test_lr_nan_is_loud(tmp_path, capsys):
    """A diverged job says so on stderr, flags its rows and exits with status 1."""
    out = str(tmp_path / "out")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        rc = main(_tiny(out, "--lr", "nan", "--epochs", "1", "--seeds", "1"))
    captured = capsys.readouterr()
    assert rc == 1
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
