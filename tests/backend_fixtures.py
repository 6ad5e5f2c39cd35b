"""Helpers for running one computation on several backends and comparing with the NumPy backend.

``backend_name`` is a fixture parametrised over every backend usable here plus an explicit ``cupy`` (marked
``gpu``; skipped with the backend's own reason where it cannot run); it restores the NumPy backend afterwards.
Import it into a test module (``from backend_fixtures import backend_name``) to use it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import pytest

import xpnet

BACKEND_PARAMS = [name for name in xpnet.backends_available() if name != "cupy"]
BACKEND_PARAMS = [*BACKEND_PARAMS, pytest.param("cupy", marks=pytest.mark.gpu)]
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture(params=BACKEND_PARAMS)
def backend_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a usable backend (made active); NumPy is active again after the test, pass or fail."""
    try:
        xpnet.use(request.param)
    except xpnet.BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield request.param
    finally:
        xpnet.use("numpy")


@contextlib.contextmanager
def on_backend(name: str, dtype: Any = None) -> Iterator[None]:
    """Run the block on backend ``name`` (and default dtype ``dtype``), restoring both afterwards."""
    previous_backend, previous_dtype = xpnet.get_backend(), xpnet.get_default_dtype()
    xpnet.use(name)
    if dtype is not None:
        xpnet.set_default_dtype(dtype)
    try:
        yield
    finally:
        xpnet.use(previous_backend.name)
        xpnet.set_default_dtype(previous_dtype)


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: Any, what: str = "") -> None:
    """Equal dtype and shape, and values within RTOL[dtype] of ``expected``, relative to its largest magnitude."""
    rtol = RTOL[np.dtype(dtype)]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)
