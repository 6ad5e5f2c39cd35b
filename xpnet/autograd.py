"""Reverse-mode autograd over backend arrays: ``Tensor``, ``Function`` and the elementary ops.

A ``Function`` computes its forward and backward on raw arrays of the active backend; ``Function.apply``
wraps the result in a ``Tensor`` whose ``Node`` remembers how it was made. ``Tensor.backward()`` walks the graph
of nodes once in reverse topological order, summing the gradients of tensors used more than once. Nodes hold
what each backward needs (its saved arrays) but not the tensors themselves, so an intermediate result that no
backward saved is freed as soon as the forward is done with it, as in PyTorch.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from xpnet import kernels, validate
from xpnet.backend import get_backend

_default_dtype = np.dtype(np.float32)
_grad_enabled = True
_observer = threading.local()  # .callback: see observe_calls


def set_default_dtype(dtype: Any) -> None:
    """Float dtype for new parameters and tensors built from Python numbers (float32 unless changed)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"default dtype must be a float type, got {dtype}")
    _default_dtype = dtype


def get_default_dtype() -> np.dtype:
    return _default_dtype


def is_grad_enabled() -> bool:
    return _grad_enabled


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: ops inside record no graph (evaluation, optimizer updates)."""

    def __enter__(self) -> None:
        global _grad_enabled
        self._previous = _grad_enabled
        _grad_enabled = False

    def __exit__(self, *exc: Any) -> None:
        global _grad_enabled
        _grad_enabled = self._previous


@contextlib.contextmanager
def observe_calls(callback: Callable[[type[Function], tuple, dict[str, Any], Tensor, Context], None]
                  ) -> Iterator[None]:
    """Inside the block, every ``Function.apply`` of this thread calls ``callback(fn, inputs, options, output, ctx)``
    after its forward (``ctx``: what the forward saved for its backward): how ``xpnet.export`` traces a forward into a
    graph and ``xpnet.check`` reads the max-pool winners (an inner block takes over until it ends)."""
    previous = getattr(_observer, "callback", None)
    _observer.callback = callback
    try:
        yield
    finally:
        _observer.callback = previous


class Context:
    """What a Function's forward leaves for its backward."""

    __slots__ = ("saved", "needs_input_grad", "__dict__")

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.needs_input_grad = needs_input_grad
        self.saved: tuple = ()

    def save_for_backward(self, *arrays: Any) -> None:
        self.saved = arrays


class Node:
    """How a non-leaf tensor was made: its Function, the Context its forward filled, and per input an edge (the
    input's own Node, the input itself if it is a leaf that needs a gradient, or None) and its (shape, dtype), which
    the backward's gradients are checked against."""

    __slots__ = ("fn", "ctx", "edges", "inputs_meta")

    def __init__(self, fn: type[Function], ctx: Context, edges: tuple, inputs_meta: tuple):
        self.fn, self.ctx, self.edges, self.inputs_meta = fn, ctx, edges, inputs_meta


class Tensor:
    """An array of the active backend, with the gradient machinery around it."""

    __array_priority__ = 1000  # so ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        if isinstance(data, Tensor):
            data = data.data
        backend = get_backend()
        if not backend.is_array(data) or (dtype is not None and data.dtype != dtype):
            if dtype is None and not isinstance(data, np.ndarray):
                as_np = np.asarray(data)
                dtype = _default_dtype if as_np.dtype.kind == "f" or as_np.dtype == object else None
            data = backend.asarray(data, dtype=dtype)
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Any = None
        self._node: Node | None = None  # None for a leaf

    # --- array-like -----------------------------------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    is_leaf = property(lambda self: self._node is None)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{grad})"

    def numpy(self) -> np.ndarray:
        """A host NumPy copy of the data (no graph)."""
        return get_backend().to_numpy(self.data)

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.size == 1 else _raise_item(self.shape)

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """DLPack export of the data, no copy: ``np.from_dlpack(t)``, ``torch.from_dlpack(t)`` (no graph)."""
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.data.__dlpack_device__()

    # --- gradients --------------------------------------------------------------------------------------------
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (was it made under no_grad?)")
        xp = get_backend().xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        root = self if self._node is None else self._node
        grads: dict[int, Any] = {id(root): _output_grad(grad, self)}
        for item in reversed(_topological_order(root)):
            g = grads.pop(id(item), None)
            if g is None:
                continue
            if isinstance(item, Tensor):  # a leaf
                item.grad = g if item.grad is None else item.grad + g
                continue
            if item.ctx is None:
                raise RuntimeError(f"backward() through the graph a second time: {item.fn.__name__}'s saved arrays "
                                   "were freed by the first (run the forward pass again)")
            input_grads = _checked_input_grads(item, item.fn.backward(item.ctx, g))
            for edge, pg in zip(item.edges, input_grads):
                if pg is None or edge is None:
                    continue
                key = id(edge)
                grads[key] = pg if key not in grads else grads[key] + pg
            item.ctx = None  # free saved arrays as soon as they are used

    # --- operators -------------------------------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor: return Add.apply(self, _like(other, self))
    def __radd__(self, other: Any) -> Tensor: return Add.apply(_like(other, self), self)
    def __sub__(self, other: Any) -> Tensor: return Sub.apply(self, _like(other, self))
    def __rsub__(self, other: Any) -> Tensor: return Sub.apply(_like(other, self), self)
    def __mul__(self, other: Any) -> Tensor: return Mul.apply(self, _like(other, self))
    def __rmul__(self, other: Any) -> Tensor: return Mul.apply(_like(other, self), self)
    def __truediv__(self, other: Any) -> Tensor: return Div.apply(self, _like(other, self))
    def __rtruediv__(self, other: Any) -> Tensor: return Div.apply(_like(other, self), self)
    def __neg__(self) -> Tensor: return Neg.apply(self)
    def __matmul__(self, other: Any) -> Tensor: return MatMul.apply(self, _like(other, self))
    def __rmatmul__(self, other: Any) -> Tensor: return MatMul.apply(_like(other, self), self)

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        return Sum.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        axes = _axes(axis, self.ndim)
        count = int(np.prod([self.shape[a] for a in axes])) if axes is not None else self.size
        return self.sum(axis, keepdims) * (1.0 / count)

    def reshape(self, *shape: Any) -> Tensor:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=shape)

    def transpose(self, *axes: Any) -> Tensor:
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Transpose.apply(self, axes=axes or None)

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def exp(self) -> Tensor: return Exp.apply(self)
    def log(self) -> Tensor: return Log.apply(self)
    def relu(self) -> Tensor: return ReLU.apply(self)
    def sigmoid(self) -> Tensor: return Sigmoid.apply(self)
    def tanh(self) -> Tensor: return Tanh.apply(self)


def _output_grad(grad: Any, out: Tensor) -> Any:
    """The gradient given to ``backward(grad)`` as an array of ``out``'s shape and dtype, as PyTorch takes it
    (cast, never broadcast): a wrong shape would broadcast silently or be misread by a compiled kernel."""
    data = grad.data if isinstance(grad, Tensor) else grad
    if not get_backend().is_array(data):
        data = get_backend().asarray(data)
    validate.gradient("backward", "grad", data, out.shape)
    return data if data.dtype == out.dtype else data.astype(out.dtype)


def _checked_input_grads(node: Node, input_grads: Any) -> list:
    """A Function's backward result as one gradient (or None) per input, each of its input's shape (a defensive
    check naming the Function: a wrong shape would broadcast silently into a leaf's ``.grad``) and dtype (cast, as
    PyTorch does, so a gradient's dtype never depends on how a backend promotes)."""
    grads = list(input_grads) if isinstance(input_grads, tuple) else [input_grads]
    name = node.fn.__name__
    if len(grads) != len(node.edges):
        raise RuntimeError(f"{name}.backward returned {len(grads)} gradients, expected {len(node.edges)} "
                           f"(one per input)")
    for index, (edge, meta, pg) in enumerate(zip(node.edges, node.inputs_meta, grads)):
        if pg is None or edge is None:
            continue
        shape, dtype = meta
        if tuple(pg.shape) != shape:
            raise RuntimeError(f"{name}.backward returned a gradient of shape {tuple(pg.shape)} for input {index}, "
                               f"expected {shape} (that input's shape)")
        if pg.dtype != dtype:
            grads[index] = pg.astype(dtype)
    return grads


def _raise_item(shape: tuple) -> float:
    raise ValueError(f"item() needs a tensor with one element, got shape {shape}")


def _like(value: Any, ref: Tensor) -> Tensor:
    """``value`` as a Tensor; Python numbers take ``ref``'s dtype so float32 stays float32."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)):
        return Tensor(get_backend().xp.asarray(value, dtype=ref.dtype))
    return Tensor(value)


def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _topological_order(root: Node | Tensor) -> list[Node | Tensor]:
    """The nodes and leaves reachable from ``root`` that need a gradient, every input before what was made from
    it."""
    order: list[Node | Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Node | Tensor, bool]] = [(root, False)]
    while stack:
        item, expanded = stack.pop()
        if expanded:
            order.append(item)
            continue
        if id(item) in visited:
            continue
        visited.add(id(item))
        stack.append((item, True))
        if isinstance(item, Node):
            stack.extend((e, False) for e in item.edges if e is not None and id(e) not in visited)
    return order


def _edge(t: Tensor | None) -> Node | Tensor | None:
    """What the graph keeps of an input: its Node, itself if it is a leaf needing a gradient, else nothing."""
    if t is None or not t.requires_grad:
        return None
    return t if t._node is None else t._node


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a Tensor on the active backend (floats from Python numbers take the default dtype)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def from_dlpack(obj: Any, requires_grad: bool = False) -> Tensor:
    """A Tensor sharing the memory of any DLPack producer (NumPy, CuPy, PyTorch) on the active backend's device."""
    return Tensor(get_backend().xp.from_dlpack(obj), requires_grad=requires_grad)


class Function:
    """One differentiable operation. Subclasses write ``forward(ctx, *arrays, **options)`` returning an array
    and ``backward(ctx, grad)`` returning one gradient (or None) per array input, all on raw backend arrays."""

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Tensor | None, **options: Any) -> Tensor:
        """Run forward on the inputs' arrays (None passes through, e.g. a missing bias) and record the graph."""
        try:
            needs = tuple(t is not None and t.requires_grad for t in inputs)
        except AttributeError:  # checked only on failure: this runs for every operation
            wrong = next((t for t in inputs if t is not None and not isinstance(t, Tensor)), None)
            if wrong is None:
                raise
            raise TypeError(f"{cls.__name__}: expected xpnet Tensors as inputs, got a {type(wrong).__module__}."
                            f"{type(wrong).__qualname__}; wrap an array with xpnet.tensor(x)") from None
        out = Tensor.__new__(Tensor)
        ctx = Context(needs)
        out.data = cls.forward(ctx, *(None if t is None else t.data for t in inputs), **options)
        out.grad = None
        out.requires_grad = _grad_enabled and any(needs)
        out._node = None
        if out.requires_grad:
            out._node = Node(cls, ctx, tuple(_edge(t) for t in inputs),
                             tuple(None if t is None else (t.shape, t.dtype) for t in inputs))
        observer = getattr(_observer, "callback", None)
        if observer is not None:
            observer(cls, inputs, options, out, ctx)
        return out


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` down to ``shape``: the reverse of NumPy broadcasting."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


# --- elementary ops ---------------------------------------------------------------------------------------------

class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return (unbroadcast(g * b, a.shape) if need_a else None,
                unbroadcast(g * a, b.shape) if need_b else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        need_a, need_b = ctx.needs_input_grad
        return (unbroadcast(g / b, a.shape) if need_a else None,
                unbroadcast(-g * a / (b * b), b.shape) if need_b else None)


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


def _swap_last(a: Any) -> Any:
    return a.swapaxes(-1, -2)


class MatMul(Function):
    """``a @ b`` with NumPy's rules: batched, broadcasting batch dimensions, 1-D operands promoted."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if a.ndim == 1:
            g = g[..., None, :]
        if b.ndim == 1:
            g = g[..., None]
        need_a, need_b = ctx.needs_input_grad
        ga = unbroadcast(g @ _swap_last(b2), a2.shape).reshape(a.shape) if need_a else None
        gb = unbroadcast(_swap_last(a2) @ g, b2.shape).reshape(b.shape) if need_b else None
        return ga, gb


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return get_backend().xp.asarray(a.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        xp = get_backend().xp
        if ctx.axis is not None and not ctx.keepdims:
            g = xp.expand_dims(g, ctx.axis)
        return xp.broadcast_to(g, ctx.shape).copy()


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx, a, axes=None):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        if ctx.axes is None:
            return g.transpose()
        return g.transpose(tuple(np.argsort(ctx.axes)))


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = get_backend().xp.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return get_backend().xp.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g / a


class ReLU(Function):
    """max(a, 0), a backend kernel: the hottest elementwise op of a CNN."""

    @staticmethod
    def forward(ctx, a):
        out = get_backend().relu_forward(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return get_backend().relu_backward(out, g)


class Sigmoid(Function):
    """1 / (1 + exp(-a)) as where(a >= 0, 1, e) / (1 + e) with e = exp(-|a|) <= 1: no overflow at any a."""

    @staticmethod
    def forward(ctx, a):
        xp = get_backend().xp
        e = xp.exp(-xp.abs(a))
        out = kernels.select(xp, ~(a >= 0), e, 1) / (1 + e)  # = where(a >= 0, 1, e), NaN included
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * (1 - out) * out


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = get_backend().xp.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return g * (1 - out * out)
