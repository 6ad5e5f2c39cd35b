"""Backend registry: which array module and hot kernels xpnet runs on.

A backend is picked once, at first use, from ``XPNET_BACKEND`` (default ``numpy``), or in code with
``xpnet.use(name)``. Backends are found through the ``xpnet.backends`` entry-point group, so a third-party
package adds one exactly as the built-in ones are added. Nothing here imports numba or cupy: a backend's
module is imported only when that backend is selected.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Callable

import numpy as np

from xpnet import kernels, special

ENV_VAR = "XPNET_BACKEND"
DEFAULT_BACKENDS = ("numba", "numpy")  # with XPNET_BACKEND unset, the first that loads is used
ENTRY_POINT_GROUP = "xpnet.backends"

# Built-in backends, so a source checkout that is not pip-installed still finds them. Entry points may add more.
_BUILTIN = {
    "numpy": "xpnet.backends.numpy:NumpyBackend",
    "numba": "xpnet.backends.numba:NumbaBackend",
    "cupy": "xpnet.backends.cupy:CupyBackend",
}
_INSTALL_HINTS = {
    "numba": "pip install 'xpnet[numba]'  (or: pip install numba)",
    "cupy": "pip install 'xpnet[cuda12]' for CUDA 12 or 'xpnet[cuda13]' for CUDA 13  (or: pip install cupy-cuda12x "
            "/ cupy-cuda13x) and a machine with a CUDA GPU",
}


class BackendUnavailable(RuntimeError):
    """The named backend is unknown here, or its library or device is missing."""


# The backend contract, stated once: every method a backend may implement and what it must return. Layers use
# nothing else of a backend but these, its `name` and its `xp`; sizes and layouts are the same on every backend, so
# layers never care which one runs. docs/backends.md's contract table repeats it word for word with Backend's
# signatures; tests/test_backend_contract.py keeps that table, Backend and the built-in backends' overrides in step.
CONTRACT: dict[str, str] = {
    "asarray": "`a` (NumPy array, scalar or list) as this backend's array on its device, of `dtype` when given",
    "to_numpy": "a host copy of this backend's array `a`, as a NumPy array",
    "synchronize": "wait for queued device work (a no-op on the CPU); benchmarks call it before every clock read",
    "is_array": "whether `a` is an array of this backend's `xp`",
    "im2col": "x `(N, C, H, W)` -> cols `(N, C, KH, KW, OH, OW)`, contiguous, zero padding; tap `(i, j)` of window "
              "`(oy, ox)` is padded pixel `(oy * sy + i * dy, ox * sx + j * dx)`; sizes as `xpnet.kernels.out_size`",
    "col2im": "the exact adjoint of im2col: an `x_shape` image whose every pixel sums the column entries covering it",
    "max_pool_forward": "`(out, argmax)`: each window's maximum and its flat in-window index (int64, row-major over "
                        "KH, KW); the first maximum wins, as in PyTorch, but a NaN beats numbers and earlier NaNs "
                        "(PyTorch's rule), and padding or the ceil-mode overhang never wins; sizes as "
                        "`xpnet.kernels.pool_out_size`",
    "max_pool_backward": "gx of `x_shape`: each window's gradient added to its argmax pixel, summed where windows "
                         "overlap",
    "avg_pool_forward": "each window's sum over the zero-padded input divided by `xpnet.kernels.avg_pool_divisor`; "
                        "sizes as `xpnet.kernels.pool_out_size`",
    "avg_pool_backward": "gx of `x_shape`, the adjoint of avg_pool_forward: each window's gradient over its divisor, "
                         "added to every pixel of the window",
    "relu_forward": "`max(x, 0)`; NaN stays NaN",
    "relu_backward": "0 where `out <= 0`, else `g` (so `g` passes where out is NaN, as in PyTorch)",
    "erf": "the error function of the float array `x`, elementwise, in its dtype; NaN stays NaN, erf(+-inf) = +-1",
    "conv2d_forward": "`(out, residual)`: x `(N, C, H, W)`, w `(OC, C / groups, KH, KW)`, b `(OC,)` or None, "
                      "symmetric zero padding, arguments checked by `xpnet.functional.conv2d`; out `(N, OC, OH, "
                      "OW)`; residual is whatever this backend's conv2d_backward needs (generic: the im2col columns)",
    "conv2d_backward": "`(gx, gw, gb)` from conv2d_forward's residual and the output gradient `g`, each None where "
                       "`needs` says it is not wanted",
    "batch_norm_forward": "`(out, mean, var, residual)`: training-mode batch norm of x `(N, C, ...)` over every axis "
                          "but the channels, arguments checked by `xpnet.functional.batch_norm`; weight and bias "
                          "`(C,)` or None; mean and biased var `(C,)` in x's dtype",
    "batch_norm_backward": "`(gx, gw, gb)` from batch_norm_forward's residual and the output gradient `g`, each None "
                           "where `needs` says it is not wanted",
}


class Backend:
    """The contract every backend fulfils (``CONTRACT``, one line per method), with generic versions of each
    method written against ``self.xp``.

    A backend subclass sets ``name`` and ``xp`` and overrides, with the same signature, whatever it can do
    faster. The generic conv2d pair is im2col + one matmul batched over samples and groups.
    """

    name: str = "abstract"
    # Output bytes per pass of the generic same-width im2col: about what a CPU core's L2 cache holds, so that
    # zeroing the wrapped columns after each copy does not fetch them from memory again (docs/performance.md).
    im2col_pass_bytes: int | None = 1 << 20
    xp: ModuleType = np

    # --- arrays -------------------------------------------------------------------------------------------
    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Move ``a`` (NumPy array, scalar or list) to this backend's device."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy a backend array back to host memory as a NumPy array."""
        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op on the CPU. Call before reading a clock."""

    def is_array(self, a: Any) -> bool:
        """True if ``a`` is an array of this backend's module."""
        return isinstance(a, self.xp.ndarray)

    # --- kernels (generic versions; backends override the hot ones) ----------------------------------------
    def im2col(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> Any:
        return kernels.im2col(self.xp, x, kernel, stride, padding, dilation, self.im2col_pass_bytes)

    def col2im(self, cols: Any, x_shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> Any:
        return kernels.col2im(self.xp, cols, x_shape, stride, padding, dilation)

    def max_pool_forward(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                         padding: tuple[int, int] = (0, 0), ceil_mode: bool = False) -> tuple[Any, Any]:
        return kernels.max_pool_forward(self.xp, x, kernel, stride, padding, ceil_mode)

    def max_pool_backward(self, gout: Any, argmax: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int] = (0, 0),
                          ceil_mode: bool = False) -> Any:
        return kernels.max_pool_backward(self.xp, gout, argmax, x_shape, kernel, stride, padding, ceil_mode)

    def avg_pool_forward(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                         ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> Any:
        return kernels.avg_pool_forward(self.xp, x, kernel, stride, padding, ceil_mode, count_include_pad,
                                        divisor_override)

    def avg_pool_backward(self, gout: Any, x_shape: tuple[int, ...], kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int], ceil_mode: bool,
                          count_include_pad: bool, divisor_override: int | None) -> Any:
        return kernels.avg_pool_backward(self.xp, gout, x_shape, kernel, stride, padding, ceil_mode,
                                         count_include_pad, divisor_override)

    def relu_forward(self, x: Any) -> Any:
        return self.xp.maximum(x, 0)

    def relu_backward(self, out: Any, g: Any) -> Any:
        return kernels.select(self.xp, ~(out <= 0), g)  # not out > 0: g passes where out is NaN

    def erf(self, x: Any) -> Any:
        return special.erf(self.xp, x)

    def conv2d_forward(self, x: Any, w: Any, b: Any, stride: tuple[int, int], padding: tuple[int, int],
                       dilation: tuple[int, int], groups: int) -> tuple[Any, Any]:
        """im2col, then one matmul batched over samples and groups, ``W (G, OC/G, K) @ cols (N, G, K, OH*OW)``
        with K = C/G*KH*KW: already NCHW."""
        n, c, _, _ = x.shape
        oc, _, kh, kw = w.shape
        cols = self.im2col(x, (kh, kw), stride, padding, dilation)    # (N, C, KH, KW, OH, OW)
        oh, ow = cols.shape[4:]
        cols = cols.reshape(n, groups, c // groups * kh * kw, oh * ow)
        out = _grouped(w, groups) @ cols                              # (N, G, OC/G, OH*OW)
        out = out.reshape(n, oc, oh, ow)
        if b is not None:
            out += b.reshape(1, oc, 1, 1)
        return out, cols

    def conv2d_backward(self, residual: Any, w: Any, g: Any, x_shape: tuple[int, ...], stride: tuple[int, int],
                        padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                        needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        """Two grouped matmuls and col2im; the input gradient (the costly part) only when ``needs[0]``. The
        residual is conv2d_forward's columns."""
        need_x, need_w, need_b = needs
        n, oc, oh, ow = g.shape
        g = g.reshape(n, groups, oc // groups, oh * ow)
        gw = (g @ residual.swapaxes(2, 3)).sum(axis=0).reshape(w.shape) if need_w else None
        gb = g.sum(axis=(0, 3)).reshape(oc) if need_b else None
        gx = None
        if need_x:
            _, _, kh, kw = w.shape
            gcols = (_grouped(w, groups).swapaxes(1, 2) @ g).reshape(n, x_shape[1], kh, kw, oh, ow)
            gx = self.col2im(gcols, x_shape, stride, padding, dilation)
        return gx, gw, gb

    def batch_norm_forward(self, x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any, Any]:
        """Training-mode batch norm of x (N, C, ...) over every axis but 1: einsum reductions (no temporaries),
        one centred copy of x (the residual, with 1/std and the weight) and the output."""
        xp = self.xp
        centred = x.reshape(x.shape[0], x.shape[1], -1)
        count = centred.shape[0] * centred.shape[2]
        mean = xp.einsum("ncm->c", centred) / count
        centred = centred - mean[:, None]
        var = xp.einsum("ncm,ncm->c", centred, centred) / count
        invstd = 1 / xp.sqrt(var + eps)
        out = centred * (invstd if weight is None else invstd * weight)[:, None]
        if bias is not None:
            out += bias[:, None]
        return out.reshape(x.shape), mean, var, (centred, invstd, weight)

    def batch_norm_backward(self, residual: Any, g: Any, needs: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
        """``gx = weight / std * (g - mean(g) - xhat * mean(g * xhat))``, ``gw = sum(g * xhat)``, ``gb = sum(g)``
        with xhat = centred / std: two einsum sums, then gx in place in four passes."""
        centred, invstd, weight = residual
        need_x, need_w, need_b = needs
        xp = self.xp
        g3 = g.reshape(centred.shape)
        count = centred.shape[0] * centred.shape[2]
        gsum = xp.einsum("ncm->c", g3)
        gdot = xp.einsum("ncm,ncm->c", g3, centred)
        gx = None
        if need_x:
            gx = centred * (-invstd * invstd * gdot / count)[:, None]
            gx += g3
            gx -= (gsum / count)[:, None]
            gx *= (invstd if weight is None else invstd * weight)[:, None]
            gx = gx.reshape(g.shape)
        return gx, gdot * invstd if need_w else None, gsum if need_b else None

    def __repr__(self) -> str:
        return f"<xpnet backend {self.name!r}>"


def _grouped(w: Any, groups: int) -> Any:
    """Convolution weights (OC, C/G, KH, KW) as the matmul operand (G, OC/G, C/G*KH*KW): a view, no copy."""
    return w.reshape(groups, w.shape[0] // groups, -1)


_active: Backend | None = None
_instances: dict[str, Backend] = {}


def _registry() -> dict[str, str | Callable[[], Backend]]:
    """Name -> 'module:Class' (built-ins) or a loadable entry point (third parties)."""
    found: dict[str, Any] = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value != found.get(ep.name):
            found[ep.name] = ep
    return found


def backend_names() -> list[str]:
    """Every backend name known here (installed or not)."""
    return sorted(_registry())


def _load(name: str) -> Backend:
    registry = _registry()
    if name not in registry:
        raise BackendUnavailable(
            f"unknown xpnet backend {name!r} (from {ENV_VAR} or xpnet.use); valid backends: "
            f"{', '.join(sorted(registry))}")
    target = registry[name]
    try:
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            cls = getattr(import_module(module_name), attr)
        else:
            cls = target.load()
        backend = cls()
    except BackendUnavailable:
        raise
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(name, f"install the package that provides the {name!r} backend")
        raise BackendUnavailable(f"xpnet backend {name!r} needs a library that is missing ({exc}); "
                                 f"install it with: {hint}") from exc
    return backend


def get_backend(name: str | None = None) -> Backend:
    """The active backend (chosen from ``XPNET_BACKEND`` at first use), or the backend called ``name``."""
    global _active
    if name is not None:
        if name not in _instances:
            _instances[name] = _load(name)
        return _instances[name]
    if _active is None:
        requested = os.environ.get(ENV_VAR, "").strip().lower()
        _active = get_backend(requested) if requested else _fastest_cpu_backend()
    return _active


def _fastest_cpu_backend() -> Backend:
    """``XPNET_BACKEND`` unset: the first of ``DEFAULT_BACKENDS`` that loads (Numba when installed, else NumPy)."""
    for name in DEFAULT_BACKENDS[:-1]:
        try:
            return get_backend(name)
        except BackendUnavailable:
            continue
    return get_backend(DEFAULT_BACKENDS[-1])


def use(name: str) -> Backend:
    """Make ``name`` the active backend for everything created from now on, and return it."""
    global _active
    _active = get_backend(name)
    return _active


def backends_available() -> list[str]:
    """Names of the backends that load and work on this machine (tries each; may import numba or cupy)."""
    usable = []
    for name in backend_names():
        try:
            get_backend(name)
        except BackendUnavailable:
            continue
        usable.append(name)
    return usable
