"""A model's layers in a table, like Keras's ``summary()``: each layer's output shape, parameters and multiply-adds.

``Module.summary(input_shape)`` and ``python -m xpnet.summary --model NAME`` trace one forward pass of a zero image
(eval mode, no gradient) with a forward hook on every leaf module, so the table follows what ``forward`` really
calls, in call order, shortcuts and repeated calls included. Work a ``forward`` does with functional calls rather
than child modules (the ResNet's ``F.relu`` and residual sum) has no module and no row.

Multiply-adds (MACs) are those of the matrix products, per image in the forward pass: a convolution does
OC*OH*OW * C/groups*KH*KW (the traced output shape carries stride, padding and dilation), a dense layer OUT * IN per
input row. Layers without parameters and BatchNorm do O(activations) work and count 0. The benchmarks
(``benchmarks/model_costs.py``) build their FLOP floors on the same trace and the same count.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from xpnet.autograd import Tensor, get_default_dtype, no_grad, tensor
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.models import ModelError, build_model
from xpnet.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Module

ELEMENTWISE_WITH_PARAMETERS = (BatchNorm1d, BatchNorm2d)  # leaves whose parameters do O(activations) work

LeafCall = Callable[[str, Module, tuple[Any, ...], Any], None]


def layer_macs(module: Module, output: Any) -> int | None:
    """Multiply-adds of one call of a leaf module, from its output; None for a leaf with parameters whose cost is
    not known (a layer of the user's own)."""
    if isinstance(module, Conv2d):
        kh, kw = module.kernel_size
        return output.size * module.in_channels // module.groups * kh * kw
    if isinstance(module, Linear):
        return output.size * module.in_features
    if module._parameters and not isinstance(module, ELEMENTWISE_WITH_PARAMETERS):
        return None
    return 0


def trace_leaves(model: Module, input_shape: Sequence[int], on_call: LeafCall) -> Any:
    """Run ``model`` once on a batch of one zero image of ``input_shape`` (eval mode, no gradient) and call
    ``on_call(name, module, args, output)`` after every call of a leaf module; returns the model's output.

    A leaf is a module without children; one registered twice in the tree is hooked once, under its first name.
    The hooks are removed and every module's mode is restored afterwards, also when the forward pass fails.
    """
    shape = _checked_input_shape(input_shape)
    leaves: dict[int, tuple[str, Module]] = {}
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            leaves.setdefault(id(module), (name, module))
    handles = [module.register_forward_hook(_hook(name, on_call)) for name, module in leaves.values()]
    modes = [(m, m.training) for _, m in model.named_modules()]
    try:
        model.eval()
        with no_grad():
            return model(_zero_image(model, shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            object.__setattr__(module, "training", training)


def _hook(name: str, on_call: LeafCall) -> Callable[[Module, tuple[Any, ...], Any], None]:
    """A forward hook that reports the call under ``name`` (hooks are given the module, not its name)."""
    return lambda module, args, output: on_call(name, module, args, output)


def _checked_input_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, or a ValueError naming it."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"input_shape: expected the shape of one input without the batch, such as (C, H, W) = "
                         f"(1, 28, 28), as positive integers; got {input_shape!r}")
    return shape


def _zero_image(model: Module, input_shape: tuple[int, ...]) -> Tensor:
    """A batch of one zero image in the model's parameter dtype, on the active backend."""
    parameters = model.parameters()
    dtype = parameters[0].dtype if parameters else get_default_dtype()
    return tensor(get_backend().xp.zeros((1, *input_shape), dtype=dtype))


@dataclass(frozen=True)
class LayerRow:
    """One call of a leaf module: its dotted name, class, output shape (batch of one), parameters and MACs.

    ``params`` counts the module's parameters on its first call and 0 on repeated calls (shared weights are
    counted once); ``macs`` is None when the layer's cost is not known.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int | None


@dataclass(frozen=True)
class ModelSummary:
    """The traced table and the model's totals; ``str()`` gives the printable table."""

    model: str
    input_shape: tuple[int, ...]
    dtype: str
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int
    param_bytes: int
    buffer_values: int

    @property
    def macs(self) -> int:
        """Multiply-adds per image over the layers whose cost is known."""
        return sum(r.macs for r in self.rows if r.macs is not None)

    @property
    def unknown_cost(self) -> list[str]:
        """Names of the layers whose multiply-adds are not counted."""
        return [r.name for r in self.rows if r.macs is None]

    def __str__(self) -> str:
        return format_summary(self)


def summarize(model: Module, input_shape: Sequence[int]) -> ModelSummary:
    """Trace ``model`` on one zero input of ``input_shape`` (no batch dimension, e.g. (C, H, W)) and tabulate it.

    A model that fails on that shape raises ValueError naming the shape and the model's own error.
    """
    shape = _checked_input_shape(input_shape)
    rows: list[LayerRow] = []
    seen: set[int] = set()
    calls: dict[str, int] = {}

    def record(name: str, module: Module, args: tuple[Any, ...], output: Any) -> None:
        first = id(module) not in seen
        seen.add(id(module))
        calls[name] = calls.get(name, 0) + 1
        label = (name or type(module).__name__) + ("" if first else f" (call {calls[name]})")
        own = sum(p.size for p in module._parameters.values()) if first else 0
        is_tensor = isinstance(output, Tensor)
        rows.append(LayerRow(label, type(module).__name__, output.shape if is_tensor else None, own,
                             layer_macs(module, output) if is_tensor else None))

    try:
        trace_leaves(model, shape, record)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"summary: {type(model).__name__} fails on inputs of shape "
                         f"({', '.join(map(str, ('N', *shape)))}): {exc}") from exc
    parameters = list({id(p): p for p in model.parameters()}.values())  # shared parameters once
    dtype = parameters[0].dtype.name if parameters else get_default_dtype().name
    return ModelSummary(type(model).__name__, shape, dtype, tuple(rows), sum(p.size for p in parameters),
                        sum(p.size for p in parameters if p.requires_grad),
                        sum(p.size * p.dtype.itemsize for p in parameters),
                        sum(b.size for b in {id(b): b for b in model.buffers()}.values()))


def _shape_text(shape: tuple[int, ...] | None) -> str:
    """``(N, 8, 28, 28)`` for a batch-first output of the traced batch of one; ``-`` for a non-tensor output."""
    if shape is None:
        return "-"
    dims = ["N", *map(str, shape[1:])] if shape and shape[0] == 1 else list(map(str, shape))
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _bytes_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"


def format_summary(summary: ModelSummary) -> str:
    """The fixed-width table: one row per leaf call, then the totals."""
    header = ("Layer", "Type", "Output shape", "Params", "MACs")
    body = [(r.name, r.type, _shape_text(r.output_shape), f"{r.params:,}", "?" if r.macs is None else f"{r.macs:,}")
            for r in summary.rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3])]
        right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    shape = ", ".join(map(str, ("N", *summary.input_shape)))
    out = [f"Model: {summary.model}, input ({shape}), {summary.dtype}", rule, line(header), rule]
    out += [line(row) for row in body]
    out += ["=" * len(rule),
            f"Total params: {summary.total_params:,} ({_bytes_text(summary.param_bytes)})",
            f"Trainable params: {summary.trainable_params:,}",
            f"Non-trainable params: {summary.total_params - summary.trainable_params:,}",
            f"Buffers (state that is not a parameter): {summary.buffer_values:,} values",
            f"Multiply-adds per image (forward): {summary.macs:,}"
            + (f" ({summary.macs / 1e6:.2f} M)" if summary.macs >= 1e6 else "")]
    if summary.unknown_cost:
        out.append(f"  not counted: {', '.join(summary.unknown_cost)} (layers of unknown cost, shown as ?)")
    return "\n".join(out)


def _parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape 3,32,32`` as a tuple of positive ints (argparse reports the ArgumentTypeError)."""
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, such as 1,28,28; "
                                         f"got {text!r}")
    return shape


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xpnet.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="a named model (report1, report2, lenet5, resnet) or package.module:function")
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 28, 28), metavar="C,H,W",
                   help="one input without the batch (default 1,28,28)")
    p.add_argument("--classes", type=int, default=10, metavar="N", help="number of classes (default 10)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of ``--model`` built for ``--input-shape`` and ``--classes``; return 1 with one error line
    if the model cannot be built or does not take that shape."""
    args = _parser().parse_args(argv)
    if args.classes < 1:
        _parser().error(f"argument --classes: expected a positive integer, got {args.classes}")
    try:
        print(summarize(_build(args.model, args.input_shape, args.classes), args.input_shape))
    except (ValueError, BackendUnavailable) as exc:  # ModelError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _build(name: str, input_shape: tuple[int, ...], classes: int) -> Module:
    """``build_model``, with a factory's failure on these sizes (a Linear layer of 0 inputs for images too small for
    the net, say) turned into a ValueError that names the model and the sizes."""
    try:
        return build_model(name, input_shape, classes)
    except ModelError:
        raise
    except (ArithmeticError, TypeError, IndexError, ValueError) as exc:
        shape = "x".join(map(str, input_shape))
        raise ValueError(f"model {name!r} cannot be built for {shape} inputs and {classes} classes: "
                         f"{type(exc).__name__}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
