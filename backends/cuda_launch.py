"""The col2im gather kernel's source, entry points and launch arithmetic: grid, block and the sized arguments.

Plain functions that need no GPU and no cupy, so the CPU emulator tests launch the unchanged .cu with exactly the
grid, block and arguments the CuPy backend hands to CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpnet.kernels import out_size

COL2IM_SOURCE = Path(__file__).parent / "kernels" / "col2im.cu"
COL2IM_KERNELS = {np.dtype(np.float32): "col2im_gather_f32", np.dtype(np.float64): "col2im_gather_f64"}
# Grid cap: enough 256-thread blocks to fill any current GPU several times over; larger images take the
# kernel's grid-stride loop. A bound, not a tuned value (no GPU timing has been measured).
MAX_GRID = 4096
MAX_BLOCK = 1024  # CUDA's limit on threads per block
INT32_MAX = 2**31 - 1


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
                  padding: tuple[int, int], dilation: tuple[int, int], dtype: Any, block: int = 256,
                  max_grid: int = MAX_GRID) -> Launch:
    """Grid, block and arguments for the gather kernel: one thread per pixel, at most ``max_grid`` blocks."""
    dtype = np.dtype(dtype)
    if dtype not in COL2IM_KERNELS:
        raise TypeError(f"the col2im kernel takes float32 or float64 columns, got {dtype}")
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols_shape
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    if min(sy, sx, dy, dx) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got stride {stride}, padding "
                         f"{padding} and dilation {dilation}")
    expected = (n, c, kh, kw, out_size(h, kh, sy, ph, dy), out_size(w, kw, sx, pw, dx))
    if tuple(cols_shape) != expected:
        raise ValueError(f"cols of shape {tuple(cols_shape)} do not fit an image of shape {tuple(x_shape)} with "
                         f"stride {stride}, padding {padding} and dilation {dilation}: expected {expected}")
    if not 1 <= block <= MAX_BLOCK or max_grid < 1:
        raise ValueError(f"block must be in 1..{MAX_BLOCK} and max_grid >= 1, got {block} and {max_grid}")
    sizes = (n, c, h, w, kh, kw, oh, ow, sy, sx, ph, pw, dy, dx)
    if max(sizes) > INT32_MAX:
        raise ValueError(f"col2im sizes {sizes} do not fit the kernel's 32-bit int parameters")
    grid = max(1, min(max_grid, -(-(n * c * h * w) // block)))
    return Launch(COL2IM_KERNELS[dtype], (grid, 1, 1), (block, 1, 1), tuple(np.int32(s) for s in sizes))
