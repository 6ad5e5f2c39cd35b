"""What the machine allows: the float32 GEMM rate and the memory copy bandwidth.

The report turns each model's FLOPs and activation bytes per epoch (``model_costs``) into a floor with these,
and shows every measured epoch as a multiple of it. Each test stores the work one call does (``flops`` or
``bytes``) in ``extra_info``; the report divides by the best round's time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from harness import SEED, SMOKE, blas_threads, rounds

pytestmark = pytest.mark.benchmark(group="limits")

GEMM_SIZE = 64 if SMOKE else 2048  # large enough for the BLAS to run at its peak
COPY_BYTES = (1 if SMOKE else 256) << 20  # far beyond the last-level cache, so the copy streams through memory


def test_gemm_rate(benchmark: Any) -> None:
    """One (n, n) @ (n, n) float32 product on NumPy's BLAS with its default threads: 2 n^3 FLOPs."""
    rng = np.random.default_rng(SEED)
    a, b = (rng.random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=rounds(10), warmup_rounds=1)
    benchmark.extra_info.update(limit="gemm", n=GEMM_SIZE, dtype="float32", flops=2 * GEMM_SIZE**3,
                                threads=blas_threads())


def test_copy_bandwidth(benchmark: Any) -> None:
    """Copy a large float32 array, split across the BLAS thread count (NumPy releases the GIL while copying);
    counted as read + write, 2 bytes moved per byte copied, as STREAM's copy does."""
    threads = blas_threads()
    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    pairs = list(zip(np.array_split(dst, threads), np.array_split(src, threads)))
    with ThreadPoolExecutor(threads) as pool:
        def copy() -> None:
            list(pool.map(lambda pair: np.copyto(*pair), pairs))
        benchmark.pedantic(copy, rounds=rounds(10), warmup_rounds=1)
    np.testing.assert_array_equal(dst, src)
    benchmark.extra_info.update(limit="copy", bytes=2 * src.nbytes, threads=threads)
