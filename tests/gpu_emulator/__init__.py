"""Run CUDA kernels on the CPU: an unchanged .cu built with g++ and ``shim.h``, launched through ctypes.

A launch takes the grid, block and argument tuple a CuPy launch takes and first checks the arguments against
the kernel's parameter list with the CuPy backend's own check (``xpnet.backends.cuda_source.check_args``), so a
wrong scalar width fails here just as it would be misread on a GPU. Also holds the NumPy mirror of the col2im
gather kernel.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from xpnet.backends.cuda_source import Param, check_args, kernel_params

SHIM = Path(__file__).with_name("shim.h")
GXX_FLAGS = ("-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror")


def gxx() -> str | None:
    """Path of g++, or None when it is not on PATH."""
    return shutil.which("g++")


def _launcher(name: str, params: tuple[Param, ...]) -> str:
    """C++ for one kernel: its declaration as parsed (g++ rejects it if it disagrees with the .cu) and an entry."""
    return (f'extern "C" void {name}({", ".join(p.ctype for p in params)});\n'
            f'extern "C" void xpnet_emu_{name}(const unsigned* grid, const unsigned* block, void** args, '
            f'unsigned long long first, unsigned long long last) '
            f'{{ xpnet_emu::launch({name}, grid, block, args, first, last); }}\n')


def _dim3(dims: tuple[int, ...]) -> ctypes.Array:
    return (ctypes.c_uint * 3)(*dims, *(1,) * (3 - len(dims)))


class EmulatedModule:
    """The ``extern "C"`` kernels of one .cu file, compiled for the CPU into a shared library in ``workdir``."""

    def __init__(self, source: Path, workdir: Path) -> None:
        self.params = kernel_params(source.read_text())
        launchers = workdir / f"{source.stem}_launchers.h"
        launchers.write_text("".join(_launcher(name, params) for name, params in self.params.items()))
        library = workdir / f"lib{source.stem}_emu.so"
        command = [gxx() or "g++", "-include", str(SHIM), "-include", str(launchers), *GXX_FLAGS, str(source),
                   "-o", str(library)]
        built = subprocess.run(command, capture_output=True, text=True)
        if built.returncode:
            raise RuntimeError(f"g++ could not build {source.name} for the emulator:\n{built.stderr}")
        self._lib = ctypes.CDLL(str(library))

    def launch(self, kernel: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...],
               threads: range | None = None) -> None:
        """Run ``kernel`` with checked ``args`` on all of grid x block, or only the linear thread ids in ``threads``."""
        params = self.params[kernel]
        check_args(kernel, params, args)
        boxes = [ctypes.c_void_p(arg.ctypes.data) if param.is_pointer
                 else np.ctypeslib.as_ctypes_type(param.dtype)(arg.item()) for param, arg in zip(params, args)]
        argv = (ctypes.c_void_p * len(boxes))(*(ctypes.addressof(box) for box in boxes))
        if threads is None:
            threads = range(int(np.prod(grid)) * int(np.prod(block)))
        run = getattr(self._lib, f"xpnet_emu_{kernel}")
        run(_dim3(grid), _dim3(block), argv, ctypes.c_ulonglong(threads.start), ctypes.c_ulonglong(threads.stop))


def gather_reference(cols: np.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                     padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """col2im in the kernel's order: each pixel sums the entries covering it from 0, ky outer and kx inner."""
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    ys, xs = np.meshgrid(np.arange(x_shape[2]) + ph, np.arange(x_shape[3]) + pw, indexing="ij")
    img = np.zeros(x_shape, cols.dtype)
    for ky in range(kh):
        for kx in range(kw):
            ty, tx = ys - ky * dy, xs - kx * dx
            hit = (ty >= 0) & (ty % sy == 0) & (ty // sy < oh) & (tx >= 0) & (tx % sx == 0) & (tx // sx < ow)
            img[:, :, hit] += cols[:, :, ky, kx, ty[hit] // sy, tx[hit] // sx]
    return img
