"""The NumPy backend: the reference every other backend is compared with.

It uses the generic kernels unchanged: im2col by an ``as_strided`` window view copied once, col2im by KH*KW
strided slice-adds (correct when windows overlap), max pooling through the same window view.
"""

from __future__ import annotations

import numpy

from xpnet.backend import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = numpy
