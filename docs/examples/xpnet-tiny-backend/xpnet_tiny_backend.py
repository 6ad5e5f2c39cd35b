"""A third-party xpnet backend: NumPy arrays, the generic kernels, and its own col2im (an ``np.add.at`` scatter).

Installing this distribution is all it takes: its entry point in the ``xpnet.backends`` group makes
``XPNET_BACKEND=tiny`` and ``xpnet.use("tiny")`` work.
"""

import numpy as np

from xpnet.backend import Backend


class TinyBackend(Backend):
    name = "tiny"
    xp = np
    col2im_calls = 0  # lets a test see that xpnet really ran this backend's kernel

    def col2im(self, cols, x_shape, stride, padding, dilation=(1, 1)):
        TinyBackend.col2im_calls += 1
        n, c, h, w = x_shape
        _, _, kh, kw, oh, ow = cols.shape
        (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
        img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
        i, j, oy, ox = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(oh), np.arange(ow), indexing="ij")
        np.add.at(img, (slice(None), slice(None), (oy * sy + i * dy).ravel(), (ox * sx + j * dx).ravel()),
                  cols.reshape(n, c, -1))
        return img[:, :, ph:ph + h, pw:pw + w]
