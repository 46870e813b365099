"""The Python stages of ``benchmarks/gpu_check.sh``, one subcommand each.

    python3 -m benchmarks.gpu_stages env                  # summary header (Markdown)
    python3 -m benchmarks.gpu_stages install [--dry-run]  # editable install, no extensions
    python3 -m benchmarks.gpu_stages build [--dry-run]    # the same with them, GPU 0's arch
    python3 -m benchmarks.gpu_stages launches [--dry-run] # kernel launches per step
    python3 -m benchmarks.gpu_stages syncs [--dry-run]    # steps under sync debug "error"
    python3 -m benchmarks.gpu_stages bench NAME [--dry-run] --out DIR

``install``: ``pip install --no-build-isolation --no-deps -e .`` (nothing is
downloaded) with ``XSAM_FAST_NO_EXT=1``: seconds, and the package with its Triton
kernels is importable even if the build is stopped. ``build``: the same with the
extensions, ``FORCE_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` set to GPU 0's compute
capability and ``MAX_JOBS`` to the CPU count. Both print the backends' status as a
fresh process sees it.

``launches``: for the ``triton`` and ``cuda`` backends and 3, 62 and 300
parameter tensors, one default XSAM step (SGD with momentum, fixed alpha, one
ascent) after two warm-up steps: the launches of xsam_fast's Triton kernels
(:mod:`benchmarks.triton_launches`; in a dry run counted, not run) and the CUDA
kernels and memory operations ``torch.profiler`` records, per step.

``syncs``: XSAM steps of a small CNN with SGD and AdamW, one and two ascents: two
warm-up steps (they build the plan and the state), then three steps with each
optimizer call under ``torch.cuda.set_sync_debug_mode("error")`` (a host
synchronisation raises).

``bench``: one of :data:`BENCHES`, a ``benchmarks.bench_step`` run.

``--dry-run`` runs the same code on the CPU with tiny sizes: Triton under its
interpreter (``TRITON_INTERPRET=1``, set by the caller before Python starts),
the CUDA backend and what needs CUDA (profiler kernel counts, sync debug mode)
skipped with a message, and the torch.compile baseline traced whole
(``fullgraph``) but compiled by the ``aot_eager`` backend instead of Inductor
(whose C++ compilation alone takes minutes on a small CPU).

A stage exits 0 when it passed, :data:`SKIPPED` when a dry run had nothing to run
(no backend runs here), and another non-zero status on a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

import xsam_fast
from xsam_fast import XSAM

from . import bench_step, report
from .impls import base_kwargs
from .machine import cpu_name, gpu_driver, gpu_name, machine_info, now

#: exit status of a dry-run stage that found nothing to run
SKIPPED = 3
GPU_BACKENDS = ("triton", "cuda")
TENSOR_COUNTS = (3, 62, 300)
BASES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, base_kwargs()),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2)),
}

#: bench_step arguments per benchmark stage: (on a GPU, in a dry run)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "bandwidth": (
        [
            "--device",
            "cuda",
            "--sizes",
            "125M,1B",
            "--dtypes",
            "fp32,bf16",
            "--backends",
            "triton,cuda",
            "--repeat",
            "20",
            "--warmup",
            "3",
            "--budget-s",
            "4",
            "--copy-mib",
            "1024",
        ],
        [
            "--sizes",
            "tiny",
            "--dtypes",
            "fp32,bf16",
            "--backends",
            "triton,cuda,reference",
            "--repeat",
            "2",
            "--warmup",
            "1",
            "--copy-mib",
            "8",
        ],
    ),
    "resnet18": (
        [
            "--device",
            "cuda",
            "--sizes",
            "resnet18",
            "--dtypes",
            "fp32,bf16",
            "--backends",
            "triton,cuda,reference,authors-style,foreach",
            "--repeat",
            "30",
            "--warmup",
            "3",
            "--budget-s",
            "4",
        ],
        [
            "--sizes",
            "tiny",
            "--dtypes",
            "fp32",
            "--backends",
            "triton,cuda,reference,authors-style,foreach",
            "--repeat",
            "2",
            "--warmup",
            "1",
            "--copy-mib",
            "8",
        ],
    ),
    "compiled": (
        [
            "--device",
            "cuda",
            "--sizes",
            "resnet18",
            "--dtypes",
            "fp32",
            "--backends",
            "compiled,foreach,triton,cuda",
            "--repeat",
            "20",
            "--warmup",
            "3",
            "--budget-s",
            "4",
        ],
        [
            "--sizes",
            "tiny",
            "--dtypes",
            "fp32",
            "--backends",
            "compiled,reference",
            "--repeat",
            "1",
            "--warmup",
            "2",
            "--copy-mib",
            "8",
            "--no-plot",
            "--compile-backend",
            "aot_eager",
        ],
    ),
}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch (use --dry-run to run on the CPU)")
    return torch.device("cuda")


def _backends(dry_run: bool) -> Iterator[str]:
    """The GPU backends that run here; the others are announced as skipped."""
    status = xsam_fast.backend_status()
    for name in GPU_BACKENDS:
        if status[name]:
            _say(f"{name}: skipped, not available here ({status[name]})")
        elif name == "cuda" and dry_run:
            _say("cuda: skipped in a dry run (CUDA kernels need a GPU)")
        else:
            yield name


# ------------------------------------------------------------------ env, arch


def env() -> int:
    """Markdown lines naming the machine and the software (the summary's header)."""
    info = machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    lines = [
        f"- date: {now()}",
        f"- GPU: {gpu_name() or 'none visible to torch'}",
        f"- driver: {gpu_driver() or 'n/a'}",
        f"- torch: {info['torch']} (CUDA {torch.version.cuda})",
        f"- triton: {info['triton'] or 'not installed'}",
        f"- python: {info['python']}",
        f"- host: {cpu_name()}, {info['cores']} logical CPUs, load average {info['load']}",
        "- xsam_fast backends: "
        + ", ".join(f"{k}: {v or 'available'}" for k, v in xsam_fast.backend_status().items()),
    ]
    _say("\n".join(lines))
    return 0


def arch() -> str | None:
    """``major.minor`` of GPU 0 (for ``TORCH_CUDA_ARCH_LIST``), None without a GPU."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    _say("$ " + " ".join(cmd))
    return subprocess.run(cmd, env=env).returncode


def install(dry_run: bool, extensions: bool) -> int:
    """The editable install: without extensions (seconds; the package and its Triton kernels
    importable whatever the build does), or with them for GPU 0's arch only."""
    target = arch()
    if extensions:
        env_vars = dict(
            FORCE_CUDA="1",
            TORCH_CUDA_ARCH_LIST=target or "<GPU 0's major.minor>",
            MAX_JOBS=str(os.cpu_count() or 1),
        )
    else:
        env_vars = dict(XSAM_FAST_NO_EXT="1")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-build-isolation",
        "--no-deps",
        "-e",
        ".",
    ]
    shown = " ".join(f"{k}={v}" for k, v in env_vars.items()) + " " + " ".join(cmd)
    if dry_run:
        _say(f"dry run: not installing; on a GPU this runs: {shown}")
        return SKIPPED
    if extensions and target is None:
        _say("no CUDA device visible to torch: cannot pick the CUDA arch")
        return 1
    if (
        _run([sys.executable, "-m", "pip", "--version"]) != 0
        and _run([sys.executable, "-m", "ensurepip"]) != 0
    ):
        _say("no pip for this Python, and ensurepip failed")
        return 1
    rc = _run(cmd, {**os.environ, **env_vars})
    _run(
        [
            sys.executable,
            "-c",
            "import xsam_fast; print('backend_status', xsam_fast.backend_status())",
        ]
    )
    return rc


# ------------------------------------------------------------------ launches


def _sizes(count: int, dry_run: bool) -> list[int]:
    """Element counts of ``count`` tensors: varied lengths, tiny in a dry run."""
    return [64] * count if dry_run else [(37 * i) % 5000 + 1 for i in range(count)]


def _xsam_params(
    count: int, device: torch.device, dry_run: bool
) -> tuple[list[nn.Parameter], list[Tensor], list[Tensor]]:
    gen = torch.Generator(device=device).manual_seed(0)
    sizes = _sizes(count, dry_run)
    params = [nn.Parameter(torch.randn(n, generator=gen, device=device)) for n in sizes]
    grads = [[torch.randn(n, generator=gen, device=device) * 1e-3 for n in sizes] for _ in "ab"]
    return params, grads[0], grads[1]


def _one_step(opt: XSAM, params: list[nn.Parameter], g1: list[Tensor], g2: list[Tensor]) -> None:
    for p, g in zip(params, g1):
        p.grad = g.clone()
    opt.first_step()
    for p, g in zip(params, g2):
        p.grad = g.clone()
    opt.second_step()


def _cuda_activities(fn: Callable[[], None]) -> list[str]:
    """Cells: the kernels, and the memory copies and sets, that the CUDA profiler records
    while ``fn`` runs; where the profiler fails, ``fn`` runs unprofiled and the cells say
    why."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except RuntimeError as exc:
        _say(f"torch.profiler failed ({exc}); the step runs unprofiled")
        fn()
        return ["n/a (profiler failed)"] * 2
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    memory = sum(1 for e in events if e.name.lower().startswith(("memcpy", "memset")))
    return [str(len(events) - memory), str(memory)]


def launches(dry_run: bool) -> int:
    device = _device(dry_run)
    from .triton_launches import KernelLaunches

    head = [
        "backend",
        "tensors",
        "triton launches/step",
        "CUDA kernels/step",
        "CUDA memcpy+memset/step",
    ]
    body = []
    for backend in _backends(dry_run):
        for count in TENSOR_COUNTS:
            params, g1, g2 = _xsam_params(count, device, dry_run)
            opt = XSAM(
                params, torch.optim.SGD, rho=0.05, alpha=0.5, backend=backend, **base_kwargs()
            )
            # a dry run counts without running the kernels (the interpreter is slow)
            with KernelLaunches(run_kernels=not dry_run) as counter:
                for _ in range(2):  # the plan, the tables and the momentum buffers
                    _one_step(opt, params, g1, g2)
                counter.reset()
                if device.type == "cuda":
                    cuda_cells = _cuda_activities(lambda: _one_step(opt, params, g1, g2))
                else:
                    _one_step(opt, params, g1, g2)
                    cuda_cells = ["n/a (no CUDA)", "n/a (no CUDA)"]
            triton_cell = str(counter.count) if backend == "triton" else "-"
            body.append([backend, str(count), triton_cell, *cuda_cells])
            _say(
                f"{backend} {count} tensors: triton launches {triton_cell}, CUDA "
                f"{cuda_cells[0]} kernels, {cuda_cells[1]} memory operations; per kernel "
                f"{dict(counter.by_kernel)}"
            )
    if not body:
        _say("no GPU backend ran")
        return SKIPPED if dry_run else 1
    _say("\n".join(report.markdown_table(head, body)))
    for backend in dict.fromkeys(row[0] for row in body):
        counts = {tuple(row[2:]) for row in body if row[0] == backend}
        _say(
            f"{backend}: launches per step "
            + ("the same for " if len(counts) == 1 else "DIFFER between ")
            + "/".join(map(str, TENSOR_COUNTS))
            + " tensors"
        )
    return 0


# ------------------------------------------------------------------ syncs


def _cnn(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    ).to(device)


@contextlib.contextmanager
def _sync_error(device: torch.device) -> Iterator[None]:
    """A host synchronisation raises inside (CUDA); nothing is watched on the CPU."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _manual_step(
    opt: XSAM,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    guard: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """One XSAM step by the manual API, each optimizer call under ``guard()``, the user's
    forward and backward outside it."""
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with guard():
            opt.first_step()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with guard():
        opt.second_step()


def syncs(dry_run: bool) -> int:
    device = _device(dry_run)
    if device.type != "cuda":
        _say(
            "dry run: the steps run on the CPU; set_sync_debug_mode needs CUDA, so no "
            "synchronisation is detected here"
        )
    failures = []
    ran = 0
    for backend in _backends(dry_run):
        for base, (cls, kwargs) in BASES.items():
            for steps in (1, 2):
                model = _cnn(device)
                opt = XSAM(
                    model.parameters(),
                    cls,
                    rho=0.1,
                    steps=steps,
                    backend=backend,
                    model=model,
                    **kwargs,
                )
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
                x = torch.randn(8, 3, 8, 8, device=device)
                y = torch.randint(0, 5, (8,), device=device)
                case = f"{backend} {base} k={steps}"
                for _ in range(2):  # unwatched: they build the plan, the state, the tables
                    _manual_step(opt, model, x, y, steps, contextlib.nullcontext)
                    sched.step()
                try:
                    for _ in range(3):  # a new learning rate each step, as with a schedule
                        _manual_step(opt, model, x, y, steps, lambda: _sync_error(device))
                        sched.step()
                except RuntimeError as exc:
                    failures.append(case)
                    _say(f"{case}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                ran += 1
                skipped = opt.stats()["skipped_steps"]
                _say(
                    f"{case}: 2 warm-up steps, then 3 steps"
                    + (" with no host synchronisation" if device.type == "cuda" else "")
                    + f"; skipped steps {skipped}"
                )
                if skipped:
                    failures.append(f"{case} (skipped steps)")
    _say(
        f"{ran} cases ran, {len(failures)} failed"
        + (f": {', '.join(failures)}" if failures else "")
    )
    if failures:
        return 1
    return 0 if ran else (SKIPPED if dry_run else 1)


# ------------------------------------------------------------------ bench


def bench(name: str, dry_run: bool, out: str) -> int:
    gpu, dry = BENCHES[name]
    if dry_run:
        _say(
            f"dry run: {name} on the CPU with tiny sizes (the GPU run: bench_step {' '.join(gpu)})"
        )
    return bench_step.main([*(dry if dry_run else gpu), "--out", out])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m benchmarks.gpu_stages",
        description="Python stages of benchmarks/gpu_check.sh",
    )
    p.add_argument("stage", choices=["env", "install", "build", "launches", "syncs", "bench"])
    p.add_argument("name", nargs="?", choices=list(BENCHES), help="the benchmark of 'bench'")
    p.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes")
    p.add_argument(
        "--out", default=str(report.RESULTS / "gpu_check"), help="output folder of 'bench'"
    )
    args = p.parse_args(argv)
    if args.stage == "env":
        return env()
    if args.stage in ("install", "build"):
        return install(args.dry_run, extensions=args.stage == "build")
    if args.stage == "launches":
        return launches(args.dry_run)
    if args.stage == "syncs":
        return syncs(args.dry_run)
    if args.name is None:
        p.error("bench needs a name: " + ", ".join(BENCHES))
    return bench(args.name, args.dry_run, args.out)


if __name__ == "__main__":
    sys.exit(main())
