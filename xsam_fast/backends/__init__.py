"""Backend registry and dispatch.

Backends are looked up by name; ``"auto"`` picks, for each bucket (device,
dtype), the first available backend of :data:`AUTO_ORDER` that supports it.
Backend modules are imported lazily, so a broken optional backend (a failed
extension build, no Triton) never breaks ``import xsam_fast``; its
``is_available()`` carries the reason.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache

import torch

from .base import Backend

#: name -> "module:Class", in the order ``auto`` prefers them
_REGISTRY: dict[str, str] = {
    "triton": "xsam_fast.backends.triton:TritonBackend",
    "cuda": "xsam_fast.backends.cuda:CudaBackend",
    "cpu": "xsam_fast.backends.cpu:CpuBackend",
    "reference": "xsam_fast.backends.reference:ReferenceBackend",
}
AUTO_ORDER = tuple(_REGISTRY)
#: device type -> the fused backends that serve it
FUSED_FOR = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}

#: comma-separated backend names that ``available_backends`` and ``auto`` ignore
DISABLE_ENV = "XSAM_FAST_DISABLE"


def backend_names() -> list[str]:
    """Every backend name ``XSAM(backend=...)`` accepts, ``"auto"`` included."""
    return ["auto", *_REGISTRY]


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[type[Backend] | None, str]:
    disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if name in disabled:
        return None, f"disabled by {DISABLE_ENV}"
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except Exception as exc:  # an optional backend must never break the package
        return None, f"import failed: {type(exc).__name__}: {exc}"
    ok, why = cls.is_available()
    return (cls, "") if ok else (None, why)


def backend_status() -> dict[str, str]:
    """``{name: ""}`` for available backends, ``{name: reason}`` for the others."""
    return {name: _load(name)[1] for name in _REGISTRY}


def available_backends() -> list[str]:
    """Names of the backends that run on this machine, in ``auto``'s order of preference."""
    return [name for name in _REGISTRY if _load(name)[0] is not None]


def validate_backend_name(name: str) -> None:
    if name not in backend_names():
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(backend_names())}")


@lru_cache(maxsize=None)
def _instance(name: str) -> Backend:
    cls, why = _load(name)
    if cls is None:
        raise RuntimeError(f"backend {name!r} is not available here: {why}")
    return cls()


def get_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend that handles a bucket of ``dtype`` tensors on ``device``."""
    if name != "auto":
        backend = _instance(name)
        if not backend.supports(device, dtype):
            raise RuntimeError(
                f"backend {name!r} does not support {dtype} tensors on {device}; "
                f"use backend='auto' or one of {available_backends()}"
            )
        return backend
    for candidate in available_backends():
        backend = _instance(candidate)
        if backend.supports(device, dtype):
            if candidate == "reference":
                _warn_fallback(device.type)
            return backend
    raise RuntimeError(f"no backend supports {dtype} tensors on {device}")


@lru_cache(maxsize=None)
def _warn_fallback(device_type: str) -> None:
    """Once per device type: ``auto`` fell back to the reference path because a fused
    backend failed to load (not one turned off by :data:`DISABLE_ENV`)."""
    status = backend_status()
    broken = {
        name: status[name]
        for name in FUSED_FOR.get(device_type, ())
        if status[name] and not status[name].startswith("disabled by")
    }
    if not broken:
        return
    from ..reporting import _outside_stacklevel

    reasons = "; ".join(f"{name}: {why}" for name, why in broken.items())
    warnings.warn(
        f"xsam-fast: backend='auto' runs the unfused reference path on {device_type} "
        f"(several times slower) because no fused backend loaded ({reasons}). "
        "Pass backend='reference' to choose it knowingly.",
        RuntimeWarning,
        stacklevel=_outside_stacklevel(),
    )
