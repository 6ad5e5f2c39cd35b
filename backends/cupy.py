"""The CuPy backend: arrays on a CUDA GPU, col2im by a deterministic gather kernel (``kernels/col2im.cu``).

Importing this module does not import cupy: constructing ``CupyBackend`` does, after a once-per-process device
probe. The launch arithmetic (``col2im_launch``) and the argument check against the kernel's C parameter list
(``kernel_params``, ``check_args``) are plain functions that need no GPU, so the CPU emulator tests launch the
unchanged .cu with exactly the grid, block and arguments this backend hands to CuPy.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from xpnet.backend import Backend, BackendUnavailable
from xpnet.kernels import out_size

COL2IM_SOURCE = Path(__file__).parent / "kernels" / "col2im.cu"
COL2IM_KERNELS = {np.dtype(np.float32): "col2im_gather_f32", np.dtype(np.float64): "col2im_gather_f64"}
# Grid cap: enough 256-thread blocks to fill any current GPU several times over; larger images take the
# kernel's grid-stride loop. A bound, not a tuned value (no GPU timing has been measured).
MAX_GRID = 4096
MAX_BLOCK = 1024  # CUDA's limit on threads per block
INT32_MAX = 2**31 - 1

# C parameter types the kernels use -> the NumPy dtype an argument must have (pointers: the pointee's dtype).
C_TYPES = {"int": np.int32, "float": np.float32, "double": np.float64}

UNUSABLE = "cupy is installed but no usable CUDA device"
_PROBE_KERNEL = r'extern "C" __global__ void xpnet_probe(float* x) { x[threadIdx.x] += 1.0f; }'
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


@dataclass(frozen=True)
class Param:
    """One kernel parameter as declared in the .cu: its name and C type (``"const float*"``, ``"int"``)."""

    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        """True for a pointer parameter (an array argument), False for a by-value scalar."""
        return self.ctype.endswith("*")

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the argument (scalar) or of the array's elements (pointer)."""
        base = self.ctype.removeprefix("const ").removesuffix("*").strip()
        if base not in C_TYPES:
            raise TypeError(f"kernel parameter {self.name!r} has C type {self.ctype!r}, which has no NumPy dtype here")
        return np.dtype(C_TYPES[base])


def kernel_params(source: str) -> dict[str, tuple[Param, ...]]:
    """Each ``extern "C" __global__`` entry point in CUDA ``source`` with its parameter list, read from the source."""
    entries = {}
    for name, params in _ENTRY.findall(_COMMENT.sub("", source)):
        entries[name] = tuple(_parse_param(text) for text in params.split(","))
    return entries


def _parse_param(text: str) -> Param:
    words = text.replace("*", " * ").replace("__restrict__", " ").split()
    return Param(words[-1], " ".join(words[:-1]).replace(" *", "*"))


def check_args(kernel: str, params: tuple[Param, ...], args: tuple[Any, ...]) -> None:
    """Raise TypeError unless ``args`` match ``params`` one for one, with exactly the declared widths.

    Pointers take C-contiguous arrays (NumPy or CuPy) of the pointee's dtype; scalars take NumPy scalars of the
    C type's dtype. A kernel launch copies each argument's bytes as given (CuPy sends a Python int as a 64-bit
    ``long long``), so an ``np.int64`` or ``int`` where the kernel reads ``int`` would be silently misread.
    """
    if len(args) != len(params):
        raise TypeError(f"{kernel} takes {len(params)} arguments ({', '.join(p.name for p in params)}), "
                        f"got {len(args)}")
    for param, arg in zip(params, args):
        what = f"{kernel} argument {param.name!r} ({param.ctype})"
        if param.is_pointer:
            if isinstance(arg, np.generic) or not hasattr(arg, "flags"):
                raise TypeError(f"{what} needs an array of {param.dtype}, got {type(arg).__name__}")
            if arg.dtype != param.dtype:
                raise TypeError(f"{what} needs an array of {param.dtype}, got an array of {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise TypeError(f"{what} needs a C-contiguous array")
        elif not isinstance(arg, np.generic) or arg.dtype != param.dtype:
            got = f"np.{arg.dtype}" if isinstance(arg, np.generic) else f"a Python {type(arg).__name__}"
            raise TypeError(f"{what} needs an np.{param.dtype} scalar, got {got}")


@dataclass(frozen=True)
class Launch:
    """One col2im launch: entry point, grid and block (x, y, z), and the scalar arguments after (cols, img)."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple[np.int32, ...]

    def args(self, cols: Any, img: Any) -> tuple[Any, ...]:
        """The kernel's full argument tuple for these arrays."""
        return (cols, img, *self.scalars)


def col2im_launch(cols_shape: tuple[int, ...], x_shape: tuple[int, ...], stride: tuple[int, int],
                  padding: tuple[int, int], dtype: Any, block: int = 256, max_grid: int = MAX_GRID) -> Launch:
    """Grid, block and arguments for the gather kernel: one thread per pixel, at most ``max_grid`` blocks."""
    dtype = np.dtype(dtype)
    if dtype not in COL2IM_KERNELS:
        raise TypeError(f"the col2im kernel takes float32 or float64 columns, got {dtype}")
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols_shape
    (sy, sx), (ph, pw) = stride, padding
    if min(sy, sx) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got stride {stride} and padding {padding}")
    expected = (n, c, kh, kw, out_size(h, kh, sy, ph), out_size(w, kw, sx, pw))
    if tuple(cols_shape) != expected:
        raise ValueError(f"cols of shape {tuple(cols_shape)} do not fit an image of shape {tuple(x_shape)} with "
                         f"stride {stride} and padding {padding}: expected {expected}")
    if not 1 <= block <= MAX_BLOCK or max_grid < 1:
        raise ValueError(f"block must be in 1..{MAX_BLOCK} and max_grid >= 1, got {block} and {max_grid}")
    sizes = (n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw)
    if max(sizes) > INT32_MAX:
        raise ValueError(f"col2im sizes {sizes} do not fit the kernel's 32-bit int parameters")
    grid = max(1, min(max_grid, -(-(n * c * h * w) // block)))
    return Launch(COL2IM_KERNELS[dtype], (grid, 1, 1), (block, 1, 1), tuple(np.int32(s) for s in sizes))


@functools.cache
def probe() -> str | None:
    """Why the CuPy backend cannot run here, or None if it can; run once per process.

    Checks ``cupy.is_available()``, a tiny allocation and a tiny NVRTC-compiled kernel launch, so a missing
    driver, device or NVRTC library is reported before any training starts.
    """
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc}); install it with: pip install 'xpnet[cuda12]'"
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


class CupyBackend(Backend):
    """Arrays on the current CUDA device; col2im by the gather kernel, the other kernels generic."""

    name = "cupy"
    im2col_pass_bytes = None  # one pass: on a GPU each pass is a kernel launch, and there is no cache to keep warm

    def __init__(self) -> None:
        import cupy  # an ImportError here is turned into an install hint by the registry

        reason = probe()
        if reason is not None:
            raise BackendUnavailable(f"xpnet backend 'cupy' cannot run here: {reason}")
        self.xp = cupy
        source = COL2IM_SOURCE.read_text()
        module = cupy.RawModule(code=source)
        self._params = kernel_params(source)
        self._kernels = {name: module.get_function(name) for name in self._params}

    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy a device array to host memory."""
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        """Wait for all queued work on the current device."""
        self.xp.cuda.Device().synchronize()

    def col2im(self, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
               padding: tuple[int, int]) -> Any:
        """col2im by the gather kernel: every pixel written once, same bits on every run, no atomics."""
        cols = self.xp.ascontiguousarray(cols)
        launch = col2im_launch(cols.shape, x_shape, stride, padding, cols.dtype)
        img = self.xp.empty(tuple(x_shape), dtype=cols.dtype)
        args = launch.args(cols, img)
        check_args(launch.kernel, self._params[launch.kernel], args)
        self._kernels[launch.kernel](launch.grid, launch.block, args)
        return img
