"""xpnet: a CNN training framework written against an ``xp`` array module, with NumPy, Numba and CuPy backends.

Importing xpnet imports NumPy only; a backend's library is imported when that backend is selected.
"""

from xpnet import threads  # first: it sets thread-pool variables that OpenBLAS reads when NumPy loads
from xpnet import allocator
from xpnet import functional, nn, optim, random
from xpnet.autograd import (Function, Tensor, from_dlpack, get_default_dtype, is_grad_enabled, no_grad,
                            set_default_dtype, tensor)
from xpnet.backend import Backend, BackendUnavailable, backend_names, backends_available, get_backend, use
from xpnet.models import build_model
from xpnet.random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailable", "Function", "Tensor", "allocator", "backend_names", "backends_available",
    "build_model", "from_dlpack", "functional", "get_backend", "get_default_dtype", "is_grad_enabled",
    "manual_seed", "nn", "no_grad", "optim", "predict", "random", "set_default_dtype", "tensor", "threads", "use",
]


def __getattr__(name: str) -> object:
    """``xpnet.predict`` (the module of ``python -m xpnet.predict``, callable as the function) loads on first use:
    it reads image files with Pillow, which ``import xpnet`` does not import."""
    if name == "predict":
        import importlib
        return importlib.import_module("xpnet.predict")
    raise AttributeError(f"module 'xpnet' has no attribute {name!r}")
