"""Export a trained model: ``python -m xpnet.export CHECKPOINT --onnx model.onnx [--safetensors weights.safetensors]``.

ONNX export traces: the model runs forward once in eval mode on a random batch while every autograd
``Function.apply`` is recorded (``autograd.observe_calls``) with the module that made it (forward pre-hooks and
hooks), so any forward code made of xpnet Functions
(containers, residual adds, a user's own Module) exports, not only layers known by structure. The calls that
the output depends on become ONNX nodes (``xpnet.onnx_ops``); parameters and buffers become initializers named
by their state_dict keys. The trace is made twice, with batch sizes 2 and 3 and different values; the two graphs
must be identical, which refuses forwards that branch on values or compute outside Functions (their results
would be frozen as constants) and proves the batch dimension free. ``--include-normalize`` traces the run's
``--normalize`` statistics in as well (``(x - mean) / std`` in a forward pre-hook), so the graph takes images / 255.

Safetensors files hold the ``state_dict()`` under PyTorch's names, so ``torch_model.load_state_dict
(safetensors.torch.load_file(path))`` works on the PyTorch twin; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

import xpnet
from xpnet.autograd import Function, Tensor, get_default_dtype, no_grad, observe_calls
from xpnet.backend import BackendUnavailable, get_backend
from xpnet.data.transforms import Normalize
from xpnet.data.files import atomic_write
from xpnet.hooks import module_stack
from xpnet.nn import Module
from xpnet.onnx_ops import CONVERTERS, Call, Unsupported

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # the optional [onnx] extra
    onnx = None

try:
    import safetensors.numpy as safetensors_numpy
    from safetensors import SafetensorError
except ImportError:  # the optional [safetensors] extra
    safetensors_numpy = None

__all__ = ["ExportError", "export_onnx", "load_safetensors", "main", "save_safetensors", "to_onnx", "trace"]

OPSET = 17
_IR_VERSION = 8  # the IR of opset 17 (onnx 1.12): runtimes of that age and newer read it
_TRACE_BATCHES = (2, 3)


class ExportError(ValueError):
    """A model or file that cannot be exported or read; the message says which and why."""


# --- tracing ----------------------------------------------------------------------------------------------------

def _with_defaults(fn: type[Function], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the defaults of ``fn.forward``'s keyword arguments, so converters see them all."""
    defaults = {name: p.default for name, p in inspect.signature(fn.forward).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **options}


@contextmanager
def _recording(model: Module) -> Iterator[list[Call]]:
    """Record every Function applied inside (``autograd.observe_calls``), with the dotted name of the innermost
    module whose forward applied it (forward pre-hooks and hooks on every module keep a stack of names)."""
    calls: list[Call] = []
    with module_stack(model, type(model).__name__) as stack:

        def observe(fn: type[Function], inputs: tuple, options: dict[str, Any], out: Tensor, ctx: Any) -> None:
            calls.append(Call(fn, inputs, _with_defaults(fn, options), out, stack[-1] if stack else ""))

        with observe_calls(observe):
            yield calls


def trace(model: Module, example: Any) -> tuple[list[Call], Tensor, tuple[Tensor, ...]]:
    """Run ``model`` once in eval mode, without gradients, on ``example`` (an array or Tensor); return the calls
    made, the input Tensor and the output Tensors. Every module's train/eval mode is restored afterwards."""
    x = example if isinstance(example, Tensor) else Tensor(get_backend().asarray(example))
    modes = [(m, m.training) for _, m in model.named_modules()]
    model.eval()
    try:
        with _recording(model) as calls, no_grad():
            out = model(x)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)  # as Module.train sets it
    outputs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not outputs or not all(isinstance(t, Tensor) for t in outputs):
        raise ExportError(f"{type(model).__name__}.forward must return a Tensor or a tuple of Tensors, got "
                          f"{type(out).__name__}")
    return calls, x, outputs


def _needed(calls: list[Call], outputs: tuple[Tensor, ...]) -> list[Call]:
    """The calls the outputs depend on, in execution order (the graph walked back from the outputs)."""
    wanted = {id(t) for t in outputs}
    kept = []
    for c in reversed(calls):
        if id(c.output) in wanted:
            kept.append(c)
            wanted.update(id(t) for t in c.inputs if t is not None)
    return kept[::-1]


# --- the ONNX graph ---------------------------------------------------------------------------------------------

class GraphBuilder:
    """Nodes and initializers of one ONNX graph; the ``xpnet.onnx_ops.Builder`` that converters call."""

    def __init__(self, model: Module, x: Tensor):
        self.values: dict[int, str] = {id(x): "input"}
        self.state = {id(t): name for name, t in [*model.named_parameters(), *model.named_buffers()]}
        self.state_arrays = {id(t.data): name for name, t in [*model.named_parameters(), *model.named_buffers()]}
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._outputs: set[str] = set()
        self.where = ""

    def _initializer(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.require(value, requirements="C"), name)
        return name

    def name(self, t: Tensor | None) -> str:
        """The value name of a traced Tensor: a node's output, the input, a parameter or buffer (named by its
        state_dict key), or else a constant; "" for a missing optional input."""
        if t is None or t.data is None:
            return ""
        if id(t) in self.values:
            return self.values[id(t)]
        if id(t) in self.state:
            return self._initializer(self.state[id(t)], t.numpy())
        return self.const(t.numpy())

    def array(self, raw: Any) -> str:
        """A raw backend array passed as an option (BatchNorm's running statistics): its buffer's name."""
        name = self.state_arrays.get(id(raw))
        host = get_backend().to_numpy(raw)
        return self._initializer(name, host) if name is not None else self.const(host)

    def const(self, value: np.ndarray) -> str:
        """An initializer for a constant, shared by equal constants."""
        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            self._consts[key] = self._initializer(f"const_{len(self._consts)}", value)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        """Add one node, named after the module that applied it; returns its output's name."""
        out = f"{self.where or 'model'}/{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def convert(self, c: Call, model: Module) -> None:
        """The nodes of one traced call; ExportError naming the layer when it has no ONNX form."""
        converter = CONVERTERS.get(c.fn)
        where = f"layer {c.where!r}" if c.where else f"model {type(model).__name__}"
        self.where = c.where
        if converter is None:
            raise ExportError(f"cannot export {where}: it applies {c.fn.__module__}.{c.fn.__qualname__}, which has "
                              f"no ONNX conversion (xpnet.onnx_ops.CONVERTERS lists those that do)")
        try:
            self.values[id(c.output)] = converter(self, c)
        except Unsupported as exc:
            raise ExportError(f"cannot export {where}: {exc}") from None

    def bind_output(self, value: str, name: str) -> None:
        """Rename the node output ``value`` to the graph output ``name``; an Identity node instead when ``value`` is
        the input, a constant or already another graph output."""
        self._outputs.add(name)
        if value in self._outputs or not any(value in n.output for n in self.nodes):
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"output/{name}"))
            return
        for n in self.nodes:
            n.output[:] = [name if v == value else v for v in n.output]
            n.input[:] = [name if v == value else v for v in n.input]
        self.values = {k: name if v == value else v for k, v in self.values.items()}


def _value_info(name: str, t: Tensor, batch: int) -> Any:
    """A graph input/output declaration whose leading dimension is the free batch size "N" when it is the batch."""
    dims: list[Any] = list(t.shape)
    if dims and dims[0] == batch:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), dims)


def _graph(model: Module, input_shape: tuple[int, ...], batch: int, seed: int) -> Any:
    """The ONNX graph of one trace on a random batch of ``batch`` inputs of ``input_shape``."""
    example = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(_model_dtype(model))
    calls, x, outputs = trace(model, example)
    builder = GraphBuilder(model, x)
    for c in _needed(calls, outputs):
        builder.convert(c, model)
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    for t, name in zip(outputs, names):
        builder.bind_output(builder.name(t), name)
    return helper.make_graph(builder.nodes, type(model).__name__, [_value_info("input", x, batch)],
                             [_value_info(n, t, batch) for t, n in zip(outputs, names)],
                             initializer=list(builder.initializers.values()))


def _require(module: Any, extra: str) -> None:
    """ExportError with the install command when an optional package did not import."""
    if module is None:
        raise ExportError(f"this needs the optional {extra!r} packages: pip install 'xpnet[{extra}]'")


def _model_dtype(model: Module) -> np.dtype:
    """The dtype of the model's first floating-point parameter (the default dtype for a model without one)."""
    return np.dtype(next((p.dtype for p in model.parameters() if p.dtype.kind == "f"), get_default_dtype()))


@contextmanager
def _normalizing_first(model: Module, normalize: Mapping[str, Sequence[float]], channels: int) -> Iterator[None]:
    """While inside: ``model`` starts its forward with ``(x - mean) / std`` per channel, as xpnet Functions (a
    forward pre-hook), so a trace records it as Sub and Div nodes ahead of the model's own. The arithmetic is
    ``xpnet.data.Normalize``'s: the statistics in the model's dtype, subtracted, then divided by."""
    checked = Normalize(normalize["mean"], normalize["std"])  # finite values, a non-zero std
    dtype, stats = _model_dtype(model), []
    for key, values in (("mean", checked.mean), ("std", checked.std)):
        if len(values) not in (1, channels):
            raise ExportError(f"normalize {key}: {len(values)} values for an input of {channels} channels; expected "
                              f"1 or {channels}")
        stats.append(np.broadcast_to(values, (channels,)).astype(dtype).reshape(1, channels, 1, 1))
    mean, std = (Tensor(get_backend().asarray(a)) for a in stats)
    handle = model.register_forward_pre_hook(lambda module, args: ((args[0] - mean) / std, *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def to_onnx(model: Module, input_shape: Sequence[int], *, metadata: Mapping[str, str] | None = None,
            normalize: Mapping[str, Sequence[float]] | None = None) -> Any:
    """The ``onnx.ModelProto`` (opset 17) computing ``model``'s eval-mode forward on inputs (N, *input_shape) of
    the model's dtype, N free; ``metadata`` becomes the model's metadata_props. ``normalize`` ({"mean", "std"},
    one value or one per channel, as training's ``--normalize`` records them) puts ``(x - mean) / std`` into the
    graph first, so that it takes images / 255. The graph is in the model's dtype: onnxruntime's CPU Conv has no
    float64 kernel, so convert a float64 model with ``to(np.float32)``."""
    _require(onnx, "onnx")
    shape = tuple(int(n) for n in input_shape)
    with _normalizing_first(model, normalize, shape[0]) if normalize is not None else nullcontext():
        graphs = [_graph(model, shape, batch, seed) for seed, batch in enumerate(_TRACE_BATCHES)]
    if graphs[0].SerializeToString() != graphs[1].SerializeToString():
        raise ExportError(f"cannot export {type(model).__name__} by tracing: its traced graph changes with the "
                          f"input (a branch on values, array math outside xpnet Functions, or a size tied to the "
                          f"batch size)")
    proto = helper.make_model(graphs[0], opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xpnet",
                              producer_version=xpnet.__version__, ir_version=_IR_VERSION)
    helper.set_model_props(proto, dict(metadata or {}))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX graph of {type(model).__name__} does not validate: {exc}") from None
    return proto


def export_onnx(model: Module, path: str, input_shape: Sequence[int], *,
                metadata: Mapping[str, str] | None = None,
                normalize: Mapping[str, Sequence[float]] | None = None) -> Any:
    """Write ``to_onnx(model, input_shape, metadata=metadata, normalize=normalize)`` to ``path`` (atomically) and
    return it."""
    proto = to_onnx(model, input_shape, metadata=metadata, normalize=normalize)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto


# --- safetensors ------------------------------------------------------------------------------------------------

def save_safetensors(model_or_state_dict: Module | Mapping[str, Any], path: str,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write a model's ``state_dict()`` (or a state dict of arrays) to ``path`` as safetensors, atomically, with
    PyTorch's key names and every dtype kept (num_batches_tracked stays int64)."""
    _require(safetensors_numpy, "safetensors")
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, Module) else model_or_state_dict
    arrays = {}
    for key, value in state.items():
        array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ExportError(f"cannot save {key!r} to safetensors: dtype {array.dtype} is not a number type")
        arrays[key] = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
    data = safetensors_numpy.save(arrays, metadata={"format": "pt", **dict(metadata or {})})
    with atomic_write(path) as f:
        f.write(data)


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file by key (pass them to ``model.load_state_dict``); ExportError naming the
    file if it is missing or not safetensors."""
    _require(safetensors_numpy, "safetensors")
    try:
        return dict(safetensors_numpy.load_file(path))
    except FileNotFoundError:
        raise ExportError(f"safetensors file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ExportError(f"{path} is not a safetensors file: {exc}") from None


# --- the command ------------------------------------------------------------------------------------------------

def _checkpoint_model(path: str) -> tuple[Module, tuple[int, ...], dict[str, np.ndarray], dict[str, Any]]:
    """The model a training checkpoint holds (rebuilt as ``python -m xpnet.evaluate`` rebuilds it: name, options,
    shape and classes from its record, weights loaded), its input shape (C, H, W), the checkpoint's weights as
    saved, and its record."""
    from xpnet.checkpoint import load_checkpoint
    from xpnet.predict import load_model

    trained = load_model(path)
    return trained.model, tuple(trained.input_shape), load_checkpoint(trained.path).weights, trained.record


def _metadata(record: dict[str, Any], path: str, normalize_in_graph: bool) -> dict[str, str]:
    """What a user of the exported model needs besides the graph: the input's scaling and the class names."""
    scaling = ("images / 255 as float (N, C, H, W); the graph applies normalize's (x - mean) / std itself"
               if normalize_in_graph else
               "images / 255 as float (N, C, H, W), then normalize's per-channel (x - mean) / std if given")
    return {"source": str(path), "model": str(record["config"]["model"]), "input": scaling,
            "normalize": json.dumps(record.get("normalize")), "normalize_in_graph": json.dumps(normalize_in_graph),
            "classes": json.dumps(record.get("classes"))}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xpnet.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a best.npz / last.npz written by python -m xpnet.train")
    p.add_argument("--onnx", metavar="PATH", help="write the model as ONNX (opset 17) here")
    p.add_argument("--safetensors", metavar="PATH", help="write the weights and buffers as safetensors here")
    p.add_argument("--include-normalize", action="store_true",
                   help="put the run's --normalize statistics into the ONNX graph, so that it takes images / 255")
    args = p.parse_args(argv)
    if not args.onnx and not args.safetensors:
        p.error("nothing to do: give --onnx PATH and/or --safetensors PATH")
    if args.include_normalize and not args.onnx:
        p.error("--include-normalize changes the ONNX graph: give --onnx PATH")
    from xpnet.checkpoint import CheckpointError
    from xpnet.models import ModelError
    try:
        model, shape, weights, record = _checkpoint_model(args.checkpoint)
        if args.safetensors:
            save_safetensors(weights, args.safetensors)  # the checkpoint's arrays themselves: bit for bit
            print(f"wrote {args.safetensors}: {len(weights)} tensors")
        if args.onnx:
            stats = record.get("normalize")
            if args.include_normalize and not stats:
                raise ExportError(f"{args.checkpoint}: the run was trained without --normalize, so "
                                  f"--include-normalize has no statistics to put into the graph")
            proto = export_onnx(model, args.onnx, shape, metadata=_metadata(record, args.checkpoint,
                                                                             args.include_normalize),
                                normalize=stats if args.include_normalize else None)
            print(f"wrote {args.onnx}: opset {OPSET}, {len(proto.graph.node)} nodes, input (N, "
                  f"{', '.join(map(str, shape))})")
    except (CheckpointError, ModelError, ExportError, BackendUnavailable, KeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
