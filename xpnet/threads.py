"""Thread-pool settings that must be in the environment before the library that reads them loads.

A training step alternates between NumPy's OpenBLAS (matmuls) and, on the Numba backend, Numba's OpenMP pool
(kernels), on the same cores. Both pools keep idle threads spinning by default, and a spinning thread holds a
core the other pool needs: OpenBLAS spins for about 0.1 s after each multi-threaded GEMM, which made LeNet-5
steps on the Numba backend 1.4x slower on a 2-core machine; Numba's OpenMP threads spinning halved GEMM speed.
Not spinning at all costs too: waking sleeping OpenMP threads took 60 us per kernel launch, a third of a LeNet-5
step at batch 32. So OpenBLAS threads sleep at once, and OpenMP threads spin briefly (GNU OpenMP's spin count)
so that back-to-back kernels find them awake, then sleep.

xpnet sets each variable only when the user has not, and records what it set, so ``restore_user_environment``
can hand a library loaded later (the PyTorch peer of the benchmarks) the environment the user started with.
"""

from __future__ import annotations

import ctypes
import os
import sys

# log2 of the CPU cycles an idle OpenBLAS thread spins before it sleeps (OpenBLAS's default is 28, about 0.1 s).
# Read once, when OpenBLAS loads at the first ``import numpy``; made no measurable difference to the NumPy backend.
OPENBLAS_SPIN = ("OPENBLAS_THREAD_TIMEOUT", "4")
# Read when Numba starts its OpenMP pool (see backends/numba.py): idle threads sleep (any OpenMP runtime), after
# spinning 10,000 rounds, a few hundred microseconds (GNU OpenMP, whose explicit spin count overrides the policy).
OPENMP_WAIT = ("OMP_WAIT_POLICY", "passive")
OPENMP_SPIN = ("GOMP_SPINCOUNT", "10000")

_set_by_xpnet: dict[str, str] = {}
_numpy_loaded_first = "numpy" in sys.modules and OPENBLAS_SPIN[0] not in os.environ


def set_default(name: str, value: str) -> None:
    """Set environment variable ``name`` to ``value`` unless the user already set it."""
    if name not in os.environ:
        os.environ[name] = value
        _set_by_xpnet[name] = value


def user_environment() -> dict[str, str]:
    """This process's environment without the variables xpnet set: what the user started with, for a child."""
    return {k: v for k, v in os.environ.items() if _set_by_xpnet.get(k) != v}


def restore_user_environment() -> None:
    """Remove the variables xpnet set, for a library loaded afterwards that should see the user's settings."""
    for name, value in list(_set_by_xpnet.items()):
        if os.environ.get(name) == value:
            del os.environ[name]
        del _set_by_xpnet[name]


def openblas_spin_limited() -> bool:
    """False while NumPy's OpenBLAS, loaded before xpnet without ``OPENBLAS_THREAD_TIMEOUT`` set, still lets its
    idle threads spin for its default 0.1 s, which slows the Numba backend's kernels (see ``reapply_openblas_env``)."""
    return not _numpy_loaded_first


def _loaded_openblas() -> str | None:
    """The path of the OpenBLAS library mapped into this process (Linux), if any."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    return min(paths) if paths else None


def reapply_openblas_env() -> bool:
    """Give an OpenBLAS that loaded before xpnet the spin limit after all: it re-reads its environment
    (``openblas_read_env``) and stops its thread pool (``blas_thread_shutdown_``, what its own fork handler calls),
    which it restarts, with the new timeout, at the next multi-threaded call. Returns whether the limit now holds;
    False where this OpenBLAS does not export those functions (then nothing was changed)."""
    global _numpy_loaded_first
    if not _numpy_loaded_first:
        return True
    path = _loaded_openblas()
    try:
        lib = ctypes.CDLL(path) if path else None
        read_env, shutdown = (lib.openblas_read_env, lib.blas_thread_shutdown_) if lib else (None, None)
    except (OSError, AttributeError):
        return False
    if read_env is None:
        return False
    read_env()
    shutdown()
    _numpy_loaded_first = False
    return True


set_default(*OPENBLAS_SPIN)
