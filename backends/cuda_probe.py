"""Whether the CuPy backend can run here: a once-per-process check of cupy, the driver, the device and NVRTC.

Importing this module does not import cupy; calling ``probe()`` does.
"""

from __future__ import annotations

import ctypes
import functools
import os
from types import ModuleType

UNUSABLE = "cupy is installed but no usable CUDA device"
_PROBE_KERNEL = r'extern "C" __global__ void xpnet_probe(float* x) { x[threadIdx.x] += 1.0f; }'


@functools.cache
def probe() -> str | None:
    """Why the CuPy backend cannot run here, or None if it can; run once per process.

    Checks ``cupy.is_available()``, a tiny allocation and a tiny NVRTC-compiled kernel launch, so a missing
    driver, device or NVRTC library is reported before any training starts.
    """
    try:
        import cupy
    except ImportError as exc:
        return (f"cupy is not installed ({exc}); install it with: pip install 'xpnet[cuda12]' (CUDA 12) or "
                "'xpnet[cuda13]' (CUDA 13)")
    try:
        if not cupy.is_available():
            return f"{UNUSABLE}: {_device_count_error(cupy)}"
        x = cupy.zeros(32, dtype=cupy.float32)
        cupy.RawKernel(_PROBE_KERNEL, "xpnet_probe")((1,), (32,), (x,))
        cupy.cuda.Device().synchronize()
        if not bool((x == 1).all()):
            return f"{UNUSABLE}: the probe kernel ran but wrote wrong values"
    except Exception as exc:  # any driver, runtime or NVRTC failure: the device is not usable by xpnet
        return f"{UNUSABLE}: {type(exc).__name__}: {exc}"
    return None


def _device_count_error(cupy: ModuleType) -> str:
    """The CUDA runtime's own words for why ``cupy.is_available()`` is False, and whether a driver is there."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError and friends carry the runtime's reason
        return f"{type(exc).__name__}: {exc}{_driver_note()}"
    return f"cupy.is_available() is False with {count} CUDA device(s) visible"


def _driver_note() -> str:
    """Say so when the NVIDIA driver library itself is missing (the runtime then blames the driver version)."""
    library = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return f" (the NVIDIA driver library {library} cannot be loaded: {exc})"
    return ""
