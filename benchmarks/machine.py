"""The machine and software a measurement ran on, as the reports name them (no host names).

Everything here is read at run time; nothing is assumed about the machine.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

import xsam_fast

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    """Installed version of distribution ``name``, or "" when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def load_average() -> str:
    """The 1/5/15-minute load averages, ``"a / b / c"`` (``"n/a"`` where there are none)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def gpu_driver() -> str:
    """The NVIDIA driver version as ``nvidia-smi`` reports it, or "" without one."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out.strip() else ""


def gpu_name(device: torch.device | None = None) -> str:
    """The CUDA device's name, or "" when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        return ""
    return torch.cuda.get_device_name(device)


def source() -> str:
    """The commit measured and the tracked files changed from it, if this is a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = [
            line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        ]
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"commit {commit}" + (f" with changes to {', '.join(changed)}" if changed else "")


def now() -> str:
    """The local date and time, ISO 8601 to the second, with the UTC offset."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def machine_info(device: torch.device) -> dict[str, str]:
    """Date, load and a hostname-free description of the machine and the software, as the
    columns every benchmark CSV starts with."""
    device = torch.device(device)
    cpu = cpu_name()
    return dict(
        date=now(),
        device=device.type,
        machine=f"{gpu_name(device)} (host: {cpu})" if device.type == "cuda" else cpu,
        cores=str(os.cpu_count()),
        torch_threads=str(torch.get_num_threads()),
        load=load_average(),
        torch=torch.__version__,
        triton=package_version("triton"),
        python=platform.python_version(),
        xsam_fast=xsam_fast.__version__,
        backends_available=" ".join(xsam_fast.available_backends()),
    )


#: the keys of :func:`machine_info`, in order
MACHINE_COLUMNS = [
    "date",
    "device",
    "machine",
    "cores",
    "torch_threads",
    "load",
    "torch",
    "triton",
    "python",
    "xsam_fast",
    "backends_available",
]


def describe(info: dict[str, str]) -> str:
    """One line naming what :func:`machine_info` found (for report headers)."""
    threads = info["torch_threads"]
    return (
        f"{info['machine']}, {info['cores']} logical CPUs, {threads} torch "
        f"thread{'s' * (threads != '1')}, load average {info['load']}; Python "
        f"{info['python']}, torch {info['torch']}"
        + (f", triton {info['triton']}" if info["triton"] else "")
        + f", xsam-fast {info['xsam_fast']} ({source()}); backends available: "
        + (info["backends_available"] or "none")
    )
