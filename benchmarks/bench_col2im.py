"""col2im (the adjoint of im2col, in every convolution's backward): the generic slice-adds, the ``np.add.at``
scatter that is the tests' reference, and each backend's kernel (Numba's per-plane kernel; CuPy's gather kernel on
a GPU). Same shapes as the im2col suite: (N, 1|6, 28, 28) images, kernel 3, stride 1, padding 1.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from harness import BATCH_SIZES, SEED, backend_or_skip, rounds, synchronized
from xpnet import kernels
from xpnet.backend import Backend, backend_names, get_backend
from xpnet.kernels import out_size

pytestmark = pytest.mark.benchmark(group="col2im")

KERNEL, STRIDE, PADDING = (3, 3), (1, 1), (1, 1)
CHANNELS = (1, 6)
# The NumPy backend's col2im is the generic slice-add kernel itself, so it is measured once, as "slices".
VARIANTS = ("slices", "add_at", *(name for name in backend_names() if name != "numpy"))
ROUNDS = {"add_at": 3}
DEFAULT_ROUNDS = 20


def col2im_add_at(cols: np.ndarray, x_shape: tuple[int, ...], stride: tuple[int, int],
                  padding: tuple[int, int]) -> np.ndarray:
    """Scatter every column entry onto its pixel with ``np.add.at`` (unbuffered, so overlaps accumulate)."""
    n, c, h, w = x_shape
    _, _, kh, kw, oh, ow = cols.shape
    (sy, sx), (ph, pw) = stride, padding
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    rows = np.arange(kh)[:, None, None, None] + sy * np.arange(oh)[None, None, :, None]  # (KH, 1, OH, 1)
    columns = np.arange(kw)[None, :, None, None] + sx * np.arange(ow)[None, None, None, :]  # (1, KW, 1, OW)
    np.add.at(img, (slice(None), slice(None), rows, columns), cols)
    return img[:, :, ph:ph + h, pw:pw + w]


def _variant(name: str) -> tuple[Backend, Callable[..., Any]]:
    if name == "slices":
        return get_backend("numpy"), lambda cols, *args: kernels.col2im(np, cols, *args)
    if name == "add_at":
        return get_backend("numpy"), col2im_add_at
    backend = backend_or_skip(name)
    return backend, backend.col2im


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_col2im(benchmark: Any, variant: str, batch_size: int, channels: int) -> None:
    backend, col2im = _variant(variant)
    x_shape = (batch_size, channels, 28, 28)
    out_hw = tuple(out_size(28, k, s, p) for k, s, p in zip(KERNEL, STRIDE, PADDING))
    host = np.random.default_rng(SEED).random((batch_size, channels, *KERNEL, *out_hw), dtype=np.float32)
    cols = backend.asarray(host)
    img = benchmark.pedantic(synchronized(backend, col2im), args=(cols, x_shape, STRIDE, PADDING),
                             rounds=rounds(ROUNDS.get(variant, DEFAULT_ROUNDS)), warmup_rounds=1)
    expected = kernels.col2im(np, host, x_shape, STRIDE, PADDING)
    np.testing.assert_allclose(backend.to_numpy(img), expected, rtol=1e-6, atol=1e-6)
    benchmark.extra_info.update(variant=variant, backend=backend.name, batch_size=batch_size, channels=channels)
