"""Shared fixtures: every test starts on the NumPy backend with float32 defaults and a fixed seed."""

import xpnet  # noqa: I001  (before NumPy, as in user code: see xpnet/threads.py)
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_state():
    """Isolate tests from each other's backend, dtype and seed choices."""
    xpnet.use("numpy")
    xpnet.set_default_dtype(np.float32)
    xpnet.manual_seed(0)
    yield
    xpnet.use("numpy")
    xpnet.set_default_dtype(np.float32)
