"""Loading the Triton backend's modules for Triton's CPU interpreter, and back.

Triton decides between compiled and interpreted kernels when ``@triton.jit`` runs,
i.e. when a kernel module is imported, from ``TRITON_INTERPRET``, and the
interpreter reads the variable again while it runs kernels. :func:`reload` sets the
variable (or clears it), reloads every kernel module and ``xsam_fast.backends.triton``,
and clears the backend registry's caches, so that code that runs afterwards sees
the backend as loaded; :func:`restore` goes back to the session's own setting.
Triton itself is imported here first, under the session's setting (its library
functions are built then).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import triton  # noqa: F401  (see the module docstring)

import xsam_fast.backends as registry

#: the modules of ``xsam_fast.triton_kernels``, in import order
KERNEL_MODULES = ("config", "common", "packing", "scalars", "reductions", "perturb", "sgd", "adam")
#: ``TRITON_INTERPRET`` as the session started
SESSION_SETTING = os.environ.get("TRITON_INTERPRET")


def kernel_module(name: str) -> ModuleType:
    return importlib.import_module(f"xsam_fast.triton_kernels.{name}")


def backend_module() -> ModuleType:
    """``xsam_fast.backends.triton`` as currently loaded."""
    return importlib.import_module("xsam_fast.backends.triton")


def interpreted() -> bool:
    """Whether the loaded kernels are built for the interpreter."""
    return kernel_module("config").INTERPRET


def reload(interpret: bool) -> ModuleType:
    """Sets ``TRITON_INTERPRET`` (``interpret``) or clears it, and reloads the kernel
    modules and the backend module; returns the backend module."""
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    try:
        for name in KERNEL_MODULES:
            importlib.reload(kernel_module(name))
        return importlib.reload(backend_module())
    finally:
        registry._load.cache_clear()
        registry._instance.cache_clear()


def restore() -> ModuleType:
    """The session's own ``TRITON_INTERPRET`` and modules built for it."""
    module = reload(SESSION_SETTING == "1")
    if SESSION_SETTING is not None:
        os.environ["TRITON_INTERPRET"] = SESSION_SETTING
    return module
