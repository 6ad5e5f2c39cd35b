"""im2col: report 1's Python-loop version against the ``as_strided`` one and each backend's kernel.

Inputs are (N, 1, 28, 28) and (N, 6, 28, 28) float32 (the first and a middle layer of the report nets), kernel 3,
stride 1, padding 1. Each test also records the peak memory one call allocates: tracemalloc for NumPy arrays
(NumPy reports its buffers to it; Numba's internal scratch is not seen), the CuPy memory pool on a GPU. The report
checks report 1's target: strided >= 50x faster than loops at batch 64, with no more memory.
"""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest

from harness import BATCH_SIZES, SEED, backend_or_skip, rounds, synchronized
from xpnet.backend import Backend, backend_names, get_backend
from xpnet.kernels import out_size

pytestmark = pytest.mark.benchmark(group="im2col")

KERNEL, STRIDE, PADDING = (3, 3), (1, 1), (1, 1)
CHANNELS = (1, 6)
# The NumPy backend's im2col is the strided kernel itself, so it is measured once, as "strided".
VARIANTS = ("loops", "strided", *(name for name in backend_names() if name != "numpy"))
ROUNDS = {"loops": 5}
DEFAULT_ROUNDS = 20


def im2col_loops(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> np.ndarray:
    """Report 1's starting point: one Python iteration per (sample, output pixel), copying that pixel's window."""
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(h, kh, sy, ph), out_size(w, kw, sx, pw)
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(n):
        for y in range(oh):
            for z in range(ow):
                cols[i, :, :, :, y, z] = padded[i, :, y * sy:y * sy + kh, z * sx:z * sx + kw]
    return cols


def peak_bytes(backend: Backend, fn: Callable[[], Any]) -> tuple[int, str]:
    """(bytes allocated at the peak of one call of ``fn``, how they were measured)."""
    if backend.xp is np:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1], "tracemalloc"
        finally:
            tracemalloc.stop()
    pool = backend.xp.get_default_memory_pool()
    backend.synchronize()
    pool.free_all_blocks()
    held = pool.total_bytes()
    fn()
    backend.synchronize()
    return pool.total_bytes() - held, "cupy memory pool"  # freed blocks stay in the pool, so this is the peak


def _variant(name: str) -> tuple[Backend, Callable[..., Any]]:
    if name == "loops":
        return get_backend("numpy"), im2col_loops
    backend = backend_or_skip("numpy" if name == "strided" else name)
    return backend, backend.im2col


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_im2col(benchmark: Any, variant: str, batch_size: int, channels: int) -> None:
    backend, im2col = _variant(variant)
    host = np.random.default_rng(SEED).random((batch_size, channels, 28, 28), dtype=np.float32)
    x = backend.asarray(host)
    run = synchronized(backend, im2col)
    args = (x, KERNEL, STRIDE, PADDING)
    cols = benchmark.pedantic(run, args=args, rounds=rounds(ROUNDS.get(variant, DEFAULT_ROUNDS)), warmup_rounds=1)
    peak, measured_by = peak_bytes(backend, lambda: run(*args))  # after the warm-up, not counting compiled code
    expected = im2col_loops(host, KERNEL, STRIDE, PADDING)
    np.testing.assert_array_equal(backend.to_numpy(cols), expected)
    benchmark.extra_info.update(variant=variant, backend=backend.name, batch_size=batch_size, channels=channels,
                                peak_bytes=peak, memory_measured_by=measured_by, output_bytes=expected.nbytes)
