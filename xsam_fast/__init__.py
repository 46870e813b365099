"""xsam-fast: XSAM (eXplicit Sharpness-Aware Minimization) with fused backends.

``from xsam_fast import XSAM``; see :class:`XSAM` for the API and
:func:`available_backends` for what runs on this machine.
"""

from .backends import available_backends, backend_status
from .batchnorm import disable_running_stats, enable_running_stats
from .optimizer import XSAM

#: the package version, written only here (pyproject.toml reads it at build time)
__version__ = "0.1.0"

__all__ = [
    "XSAM",
    "available_backends",
    "backend_status",
    "disable_running_stats",
    "enable_running_stats",
    "__version__",
]
