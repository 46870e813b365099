"""Launches of xsam_fast's Triton kernels: counted, and optionally replaced by no-ops.

Every Triton kernel (a ``triton.runtime.KernelInterface``: ``JITFunction`` on a
GPU, ``InterpretedFunction`` under ``TRITON_INTERPRET=1``) found in the modules of
``xsam_fast.triton_kernels`` is launched as ``kernel[grid](...)``, which calls the
kernel's ``run``. Inside :class:`KernelLaunches` each kernel's ``run`` is shadowed
by an instance attribute that counts the launch and then either runs the kernel
or does nothing (``run_kernels=False``: only the host side of a step is left to
time). Kernels keep their identity, so kernels calling helper ``@triton.jit``
functions compile as before; leaving the block restores every kernel.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from types import ModuleType
from typing import Any

PACKAGE = "xsam_fast.triton_kernels"


def kernel_modules(package: str = PACKAGE) -> list[ModuleType]:
    """The package and every module in it (importing them: Triton must be importable, and
    ``TRITON_INTERPRET`` set as wanted before the first import)."""
    root = importlib.import_module(package)
    return [root] + [
        importlib.import_module(f"{package}.{info.name}")
        for info in pkgutil.iter_modules(root.__path__)
    ]


def find_kernels(package: str = PACKAGE) -> dict[str, Any]:
    """``{"module.name": kernel}`` for every Triton kernel object in :func:`kernel_modules`
    (helper ``@triton.jit`` functions included: they are never launched)."""
    from triton.runtime.jit import KernelInterface

    found: dict[int, tuple[str, Any]] = {}
    for module in kernel_modules(package):
        for name, obj in vars(module).items():
            if isinstance(obj, KernelInterface) and id(obj) not in found:
                found[id(obj)] = (f"{module.__name__.rsplit('.', 1)[-1]}.{name}", obj)
    return dict(found.values())


class KernelLaunches:
    """Counts launches of the Triton kernels of ``package`` while active (a context manager).

    ``run_kernels=False`` replaces every launch by a no-op. ``count`` is the number of
    launches so far; ``by_kernel`` counts them per kernel name.
    """

    def __init__(self, run_kernels: bool = True, package: str = PACKAGE) -> None:
        self.run_kernels = run_kernels
        self.package = package
        self.by_kernel: Counter[str] = Counter()
        self._patched: list[Any] = []

    @property
    def count(self) -> int:
        return sum(self.by_kernel.values())

    def reset(self) -> None:
        self.by_kernel.clear()

    def __enter__(self) -> "KernelLaunches":
        kernels = find_kernels(self.package)
        if not kernels:
            raise RuntimeError(f"no Triton kernels found in {self.package}")
        for name, kernel in kernels.items():
            if "run" in vars(kernel):
                raise RuntimeError(f"Triton kernel {name} is already patched")
            kernel.run = self._wrap(name, type(kernel).run.__get__(kernel))
            self._patched.append(kernel)
        return self

    def _wrap(self, name: str, run: Any) -> Any:
        def launch(*args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
            if warmup:
                return run(*args, grid=grid, warmup=warmup, **kwargs)
            self.by_kernel[name] += 1
            return run(*args, grid=grid, warmup=warmup, **kwargs) if self.run_kernels else None

        return launch

    def __exit__(self, *exc: Any) -> None:
        for kernel in self._patched:
            del kernel.run
        self._patched.clear()
