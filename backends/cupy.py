"""The CuPy backend: arrays on a CUDA GPU, col2im by a deterministic gather kernel (``kernels/col2im.cu``).

Importing this module does not import cupy: constructing ``CupyBackend`` does, after the once-per-process device
probe (``cuda_probe``). Each launch takes its grid, block and arguments from ``cuda_launch`` and is checked
against the kernel's C parameter list (``cuda_source``) first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpnet.backend import Backend, BackendUnavailable
from xpnet.backends.cuda_launch import COL2IM_SOURCE, col2im_launch
from xpnet.backends.cuda_probe import probe
from xpnet.backends.cuda_source import check_args, kernel_params


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

    def col2im(self, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> Any:
        """col2im by the gather kernel: every pixel written once, same bits on every run, no atomics."""
        cols = self.xp.ascontiguousarray(cols)
        launch = col2im_launch(cols.shape, x_shape, stride, padding, dilation, cols.dtype)
        img = self.xp.empty(tuple(x_shape), dtype=cols.dtype)
        args = launch.args(cols, img)
        check_args(launch.kernel, self._params[launch.kernel], args)
        self._kernels[launch.kernel](launch.grid, launch.block, args)
        return img
