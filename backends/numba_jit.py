"""The compile settings every Numba kernel of xpnet shares.

Kernels run their outer loop with ``prange`` in parallel and are cached on disk, except when
``NUMBA_BOUNDSCHECK=1``: Numba (0.68) does not bounds-check inside a parallel ``prange`` body, so a boundschecked
run compiles the same loops serially, where every index is checked; and since Numba's disk cache does not tell
boundschecked or serial code apart, that run neither reads nor writes the cache (CI runs the kernel tests once
that way; see ``.ci/run``).
"""

from __future__ import annotations

from numba import config

PARALLEL = CACHE = not config.BOUNDSCHECK
