"""One seeded NumPy generator behind every random draw (initial weights, dropout masks).

Draws are made on the host and moved to the backend, so the same seed gives the same numbers on every backend
and a checkpoint can store the generator's exact state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the global generator (as ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The global generator; draw from it for anything that should follow ``manual_seed``."""
    return _generator


def get_state() -> dict[str, Any]:
    """The generator's state, a plain dict that JSON can hold (for checkpoints)."""
    return _generator.bit_generator.state


def set_state(state: dict[str, Any]) -> None:
    """Restore a state returned by ``get_state``."""
    _generator.bit_generator.state = state
