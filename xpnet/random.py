"""One seeded NumPy generator behind every random draw (initial weights, dropout masks), and the batch shard.

Draws are made on the host and moved to the backend, so the same seed gives the same numbers on every backend
and a checkpoint can store the generator's exact state. The batch shard is a process-wide setting saying which
rows of every global batch this process trains on (data-parallel training sets it), so that per-row draws such as
dropout masks can draw for the whole global batch and keep this process's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_generator = np.random.default_rng(0)
_batch_shard: tuple[int, int, int] | None = None


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


def set_batch_shard(lo: int, hi: int, n: int) -> None:
    """Process-wide: from now on this process holds rows ``[lo, hi)`` of each ``n``-row global batch.

    ``xpnet.functional.dropout_mask`` then draws a shard-sized batch's mask as the global batch's mask and keeps
    rows ``lo:hi``, so every process draws what a single process would and the generators stay in step. Set by
    ``xpnet.distributed.MpiWorld.shard`` for every batch; stays until changed or ``clear_batch_shard()``.
    """
    if not all(isinstance(v, (int, np.integer)) for v in (lo, hi, n)) or not 0 <= lo <= hi <= n:
        raise ValueError(f"set_batch_shard needs integers with 0 <= lo <= hi <= n, got lo={lo!r}, hi={hi!r}, "
                         f"n={n!r}")
    global _batch_shard
    _batch_shard = (int(lo), int(hi), int(n))


def clear_batch_shard() -> None:
    """Process-wide: this process holds whole batches again (the single-process default)."""
    global _batch_shard
    _batch_shard = None


def batch_shard() -> tuple[int, int, int] | None:
    """The ``(lo, hi, n)`` set by ``set_batch_shard``, or None when this process holds whole batches."""
    return _batch_shard
