"""Parity check against PyTorch: ``python -m xpnet.check --against torch``.

For each named model, xpnet's model (``build_model`` after ``manual_seed``) and its PyTorch twin (``to_torch``:
same weights, same dtype) train side by side on the same seeded synthetic batches with the same optimizer.
Dropout draws its keep-masks from xpnet's generator in both frameworks (the generator is rewound before the torch
forward), so the units dropped are the same. Every step compares the loss, the logits, every parameter gradient
and, after the update, every entry of the state_dict: parameters and buffers (BatchNorm's running statistics and
batch count, in the "params" column); the largest differences are printed, and the exit status is 1 when one
exceeds the tolerance.

In float64 xpnet is compared with torch float64 to 1e-8. Below float64 both float32 runs are judged against the
truth, torch in float64 from the same (exactly widened) weights: xpnet's float32 error may be a small multiple of
PyTorch's own float32 error (measured on torch's run and on a twin from weights one ulp up) plus a few ulps per
step. A step beyond that is excused only by a max-pool near-tie or a ReLU input near zero that float32 cannot
resolve (found by replaying the step's forward in float64 from xpnet's own state); the references then restart
from xpnet's state. docs/parity.md derives the bound.
"""

from __future__ import annotations

import argparse
import copy
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from xpnet import functional as F
from xpnet import kernels, nn, optim, random
from xpnet.autograd import ReLU, get_default_dtype, no_grad, observe_calls, set_default_dtype, tensor
from xpnet.backend import backend_names, get_backend, use
from xpnet.hooks import module_stack
from xpnet.interop.torch import MaskedDropout, to_numpy, to_torch
from xpnet.models import MODELS, build_model
from xpnet.random import manual_seed

DTYPES = {"float64": np.float64, "float32": np.float32}
LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}
QUANTITIES = ("loss", "logits", "grads", "params")
# float64: the largest ``error`` allowed (absolute up to magnitude 1, relative above).
TOLERANCES = {"float64": 1e-8}
# float32 (docs/parity.md, "Tolerances"): at step k since the references last started from xpnet's state, xpnet's
# error against the float64 truth may be DIVERGENCE_FACTOR times the largest float32 error PyTorch itself has made
# so far in that quantity, plus ROUNDING_ULPS float32 epsilons per step.
EPS32 = float(np.finfo(np.float32).eps)
DIVERGENCE_FACTOR = 10.0
ROUNDING_ULPS = 64.0
# A decision (max-pool winner, ReLU sign) that float32 takes otherwise than float64 from the same state is a
# near-tie when its float64 margin is at most TIE_ULPS float32 epsilons of the largest magnitude in that layer's
# input: the size of the rounding error of the sums that produced it.
TIE_ULPS = 16.0
MAX_FLIPS_SHOWN = 10  # per step, under the table


@dataclass
class Flip:
    """A max-pool window or ReLU decided otherwise by xpnet than by the float64 truth, with the float64 margin.

    A ``rounding`` flip: xpnet's float32 forward against the float64 forward from the same state; ``values`` are
    the float64 values decided between (for a ReLU: its input in float64, then in float32). A ``drift`` flip: the
    float64 forward from xpnet's state against the one from the truth's state (the float32 weights have drifted);
    ``values`` are the truth's values (for a ReLU: the truth's input, then the one from xpnet's state), and
    ``shift`` is how far PyTorch's own float32 state moves that layer's inputs (DIVERGENCE_FACTOR times it is
    allowed on top of rounding).
    """

    step: int
    kind: str
    layer: str
    values: tuple[float, float]
    margin: float
    scale: float
    cause: str = "rounding"
    shift: float = 0.0

    @property
    def near_tie(self) -> bool:
        """True when the float64 margin is within float32 rounding of the layer's values (plus, for a drift flip,
        DIVERGENCE_FACTOR times torch's own shift)."""
        return self.margin <= TIE_ULPS * EPS32 * self.scale + DIVERGENCE_FACTOR * self.shift

    def __str__(self) -> str:
        a, b = self.values
        ulps = self.margin / float(np.spacing(np.float32(max(abs(a), abs(b), np.finfo(np.float32).tiny))))
        where = f"in layer {self.layer!r} at step {self.step}"
        if self.kind == "max_pool":
            what = (f"max-pool {'near-tie' if self.near_tie else 'winner flip'} {where} (values {a:.9g}, {b:.9g}, "
                    f"{ulps:.2g} ulp apart")
        else:
            what = f"ReLU {'input near zero' if self.near_tie else 'sign flip'} {where} " + (
                f"(float64 {a:.3g}, float32 {b:.3g}" if self.cause == "rounding" else
                f"(truth {a:.3g}, from xpnet's float32 weights {b:.3g}")
        if self.cause == "drift":
            what += f"; weight drift, PyTorch's own moves this layer by {self.shift:.2g}"
        return what + (")" if self.near_tie else f"): NOT a near-tie, margin {self.margin:.3g} at scale "
                                                  f"{self.scale:.3g}")


@dataclass
class StepDiff:
    """One training step: xpnet's ``error`` against the reference (torch float64; params after the update),
    the reference's loss and, below float64, ``drift`` (PyTorch's own float32 error against the float64 truth,
    the larger of its two float32 runs), the ``bound`` each error is held to, the decision ``flips`` found in this
    step, and whether an excess was ``explained`` by near-ties (the references then restarted from xpnet's state)."""

    loss: float
    logits: float
    grads: float
    params: float
    torch_loss: float
    drift: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    bound: tuple[float, float, float, float] | None = None
    flips: list[Flip] = field(default_factory=list)
    explained: list[Flip] = field(default_factory=list)


@dataclass
class Snapshot:
    """One framework's view of one training step, as host arrays keyed by PyTorch's names (params: the whole
    state_dict, parameters and buffers)."""

    loss: float
    logits: np.ndarray
    grads: dict[str, np.ndarray]
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Decision:
    """One ReLU or max-pool call of a forward: the layer it ran in, its input and what the kernel decided: for a
    ReLU which outputs are positive, for max pooling the winner of each window (flat in-window offset), with the
    pooling geometry."""

    layer: str
    kind: str
    x: np.ndarray
    decided: np.ndarray
    geometry: tuple = ()


def _with_replayed_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every torch Dropout for a MaskedDropout drawing its masks the way ``xpnet.functional.dropout`` does."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Dropout):
            setattr(module, name, MaskedDropout(child.p, lambda shape, p=child.p: F.dropout_mask(shape, p)))
        else:
            _with_replayed_dropout(child)
    return module


def twins(name: str, dtype: Any = np.float64, seed: int = 0) -> tuple[nn.Module, torch.nn.Module]:
    """xpnet's model ``name`` seeded with ``seed`` in ``dtype``, and its torch twin with replayed dropout masks
    (rewind xpnet's generator with ``random.set_state`` before the torch forward to get the same masks)."""
    previous = get_default_dtype()
    set_default_dtype(dtype)
    try:
        manual_seed(seed)
        model = build_model(name)
    finally:
        set_default_dtype(previous)
    return model, _with_replayed_dropout(to_torch(model))


def xpnet_pass(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Snapshot:
    """Forward, mean cross-entropy and backward in xpnet; gradients accumulate into the model."""
    logits = model(tensor(x))
    loss = F.softmax_cross_entropy(logits, y)
    loss.backward()
    to_host = get_backend().to_numpy
    return Snapshot(loss.item(), logits.numpy(), {k: to_host(p.grad) for k, p in model.named_parameters()})


def torch_pass(module: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> Snapshot:
    """The same in PyTorch."""
    logits = module(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    return Snapshot(loss.item(), to_numpy(logits), {k: to_numpy(p.grad) for k, p in module.named_parameters()})


def error(ours: Any, reference: Any) -> float:
    """max |ours - reference| / max(1, max |reference|): absolute for values up to 1, relative above."""
    a, b = to_numpy(ours).astype(np.float64), to_numpy(reference).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


def _same_keys(ours: dict[str, Any], reference: dict[str, Any], what: str) -> None:
    """Refuse to compare two runs that do not hold the same gradients or state (a missing buffer would go unseen)."""
    if ours.keys() != reference.keys():
        raise ValueError(f"xpnet and torch hold different {what}: only xpnet {sorted(ours.keys() - reference.keys())}, "
                         f"only torch {sorted(reference.keys() - ours.keys())}")


def _errors(ours: Snapshot, reference: Snapshot) -> tuple[float, float, float, float]:
    """The ``error`` in loss, logits, gradients and state (the worst entry for the last two)."""
    _same_keys(ours.grads, reference.grads, "gradients")
    _same_keys(ours.params, reference.params, "state_dict entries")
    return (error(ours.loss, reference.loss), error(ours.logits, reference.logits),
            max(error(g, reference.grads[k]) for k, g in ours.grads.items()),
            max(error(p, reference.params[k]) for k, p in ours.params.items()))


def batches(steps: int, batch_size: int, dtype: Any, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded synthetic 28x28 greyscale batches with labels in 0..9 (a generator separate from xpnet's)."""
    rng = np.random.default_rng([seed, 1])
    return [(rng.standard_normal((batch_size, 1, 28, 28)).astype(dtype), rng.integers(0, 10, batch_size))
            for _ in range(steps)]


def make_optimizer(name: str, model: nn.Module | torch.nn.Module,
                   lr: float | None = None) -> optim.Optimizer | torch.optim.Optimizer:
    """SGD with momentum 0.9, or Adam with the default betas and eps, for an xpnet or a torch model."""
    lr = LEARNING_RATES[name] if lr is None else lr
    lib = torch.optim if isinstance(model, torch.nn.Module) else optim
    if name == "sgd":
        return lib.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "adam":
        return lib.Adam(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: sgd, adam")


def _nudge(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter of ``module``, in place, to the next representable value up."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
    return module


def _nudged(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every parameter moved to the next representable value up."""
    return _nudge(copy.deepcopy(module))


def _train_step(run_pass: Callable[..., Snapshot], model: Any, opt: Any, x: np.ndarray, y: np.ndarray) -> Snapshot:
    """One zero_grad, forward/backward and update; the snapshot holds the state_dict after the update."""
    opt.zero_grad()
    snap = run_pass(model, x, y)
    opt.step()
    snap.params = _host_state(model)
    return snap


def compare(name: str, steps: int = 20, dtype: Any = np.float64, optimizer: str = "sgd", batch_size: int = 16,
            lr: float | None = None, seed: int = 0, tol: float | None = None) -> list[StepDiff]:
    """Train model ``name`` in xpnet and in PyTorch side by side for ``steps`` steps; one StepDiff per step.

    In float64 the reference is torch's twin in float64. Below float64 it is the float64 truth and every step
    carries its ``bound`` (``tol``, when given, replaces the ulps-per-step term): see ``_compare_reduced``.
    """
    if np.dtype(dtype) != np.float64:
        return _compare_reduced(name, steps, dtype, optimizer, batch_size, lr, seed, tol)
    model, twin = twins(name, dtype, seed)
    runs = [(xpnet_pass, model), (torch_pass, twin)]
    optimizers = [make_optimizer(optimizer, m, lr) for _, m in runs]
    diffs = []
    for x, y in batches(steps, batch_size, dtype, seed):
        state = random.get_state()
        snaps = []
        for (run_pass, m), opt in zip(runs, optimizers):
            random.set_state(state)  # every run draws the same dropout masks
            snaps.append(_train_step(run_pass, m, opt, x, y))
        ours, theirs = snaps
        diffs.append(StepDiff(*_errors(ours, theirs), torch_loss=theirs.loss))
    return diffs


# --- float32: judged against the float64 truth ---------------------------------------------------------------

@contextmanager
def recording_decisions(model: nn.Module) -> Iterator[list[Decision]]:
    """Record, in call order, the input and outcome of every ReLU and max-pool Function applied while the block
    runs (``autograd.observe_calls``; a max pool's winners are those its forward saved for its backward), each
    labelled with the innermost module of ``model`` running it (forward pre-hooks and hooks)."""
    backend, calls = get_backend(), []
    with module_stack(model, "<model>") as running:

        def observe(fn: type, inputs: tuple, options: dict[str, Any], out: Any, ctx: Any) -> None:
            layer = running[-1] if running else ""
            if fn is ReLU:
                x = backend.to_numpy(inputs[0].data)
                calls.append(Decision(layer, "relu", np.array(x), backend.to_numpy(out.data) > 0))
            elif fn is F.MaxPool2d:
                x, (argmax,), geometry = backend.to_numpy(inputs[0].data), ctx.saved, tuple(ctx.options[1:])
                calls.append(Decision(layer, "max_pool", np.array(x), np.array(backend.to_numpy(argmax)), geometry))

        with observe_calls(observe):
            yield calls


def _window_values(d: Decision, x: np.ndarray, winners: np.ndarray) -> np.ndarray:
    """The value of ``x`` (d's input, or the same input in another precision) at the given winner of each window."""
    kernel, stride, padding, ceil_mode = (tuple(d.geometry) + ((0, 0), False))[:4]
    out_hw, padded_hw = kernels.pool_geometry(x.shape, kernel, stride, padding, ceil_mode)
    padded = kernels.pad_for_pool(np, x, padding, padded_hw, kernels.max_pool_fill(x.dtype))
    values = np.zeros(winners.shape, dtype=x.dtype)
    for index, rows, cols in kernels._offset_slices(kernel, stride, out_hw):
        chosen = winners == index
        values[chosen] = padded[:, :, rows, cols][chosen]
    return values


def decision_flips(ours: list[Decision], exact: list[Decision], step: int,
                   shifts: Sequence[float] | None = None) -> list[Flip]:
    """The ReLU signs and max-pool winners that ``ours`` (xpnet's float32 forward; with ``shifts``, torch's per
    layer, the float64 forward from xpnet's state) decides otherwise than ``exact`` (the float64 forward from the
    same state; with ``shifts``, from the truth's), with the float64 margin of each."""
    if [(d.layer, d.kind) for d in ours] != [(d.layer, d.kind) for d in exact]:
        raise RuntimeError("the two forwards ran different layers; cannot compare their decisions")
    cause = "rounding" if shifts is None else "drift"
    flips = []
    for d32, d64, shift in zip(ours, exact, [0.0] * len(ours) if shifts is None else shifts):
        x64 = d64.x.astype(np.float64)
        scale, where = float(np.max(np.abs(x64), initial=0.0)), np.flatnonzero(d32.decided != d64.decided)
        if d32.kind == "relu":
            flips += [Flip(step, "relu", d32.layer, (float(x64.flat[i]), float(d32.x.flat[i])), abs(float(x64.flat[i])),
                           scale, cause, shift) for i in where]
        elif where.size:
            theirs, best = _window_values(d64, x64, d32.decided).flat, _window_values(d64, x64, d64.decided).flat
            flips += [Flip(step, "max_pool", d32.layer, (float(best[i]), float(theirs[i])),
                           float(best[i] - theirs[i]), scale, cause, shift) for i in where]
    return flips


def _replay(exact: nn.Module, state: dict[str, np.ndarray], rng_state: Any, x: np.ndarray) -> list[Decision]:
    """The decisions of xpnet's float64 forward from ``state`` on batch ``x``, with the dropout masks drawn from
    ``rng_state``."""
    exact.load_state_dict(state)
    random.set_state(rng_state)
    with recording_decisions(exact) as calls, no_grad():
        exact(tensor(x.astype(np.float64)))
    return calls


@dataclass
class _PreStep:
    """What a step started from: the generator's state, the batch, and xpnet's, the truth's and torch float32's
    state_dicts (to replay the forward from each when the step needs explaining)."""

    rng_state: Any
    x: np.ndarray
    ours: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    torch32: dict[str, np.ndarray]
    drift_flips: list[Flip] | None = None  # found once, when a step first needs explaining


def drift_flips(exact: nn.Module, pre: _PreStep, step: int) -> list[Flip]:
    """Decisions that the float64 forward from xpnet's float32 state makes otherwise than the one from the truth's
    state, each allowed DIVERGENCE_FACTOR times how far torch's float32 state moves that layer's inputs."""
    truth = _replay(exact, pre.truth, pre.rng_state, pre.x)
    theirs = _replay(exact, pre.torch32, pre.rng_state, pre.x)
    shifts = [float(np.max(np.abs(t.x - d.x), initial=0.0)) for t, d in zip(theirs, truth)]
    return decision_flips(_replay(exact, pre.ours, pre.rng_state, pre.x), truth, step, shifts)


def _torch_optimizer_state(ours: optim.Optimizer, theirs: torch.optim.Optimizer) -> dict[str, Any]:
    """xpnet's optimizer buffers in a state_dict for torch's optimizer (torch's own hyper-parameters kept)."""
    state = theirs.state_dict()
    state["state"] = {int(i): {k: torch.tensor(float(v)) if k == "step" else torch.from_numpy(np.array(v))
                               for k, v in buffers.items()} for i, buffers in ours.state_dict()["state"].items()}
    return state


def _restart(model: nn.Module, opt: optim.Optimizer, references: list[torch.nn.Module],
             ref_optimizers: list[torch.optim.Optimizer], nudged: torch.nn.Module) -> None:
    """Put xpnet's weights, buffers and optimizer state into every reference run (widened to float64 in the truth;
    the nudged twin moved one ulp up again)."""
    weights = {k: torch.from_numpy(np.array(to_numpy(v))) for k, v in model.state_dict().items()}
    for module, ref_opt in zip(references, ref_optimizers):
        if [k for k, _ in module.named_parameters()] != [k for k, _ in model.named_parameters()]:
            raise RuntimeError("xpnet's and torch's parameters come in different orders; cannot move optimizer state")
        module.load_state_dict(weights)
        ref_opt.load_state_dict(_torch_optimizer_state(opt, ref_opt))
    _nudge(nudged)


def _compare_reduced(name: str, steps: int, dtype: Any, optimizer: str, batch_size: int, lr: float | None,
                     seed: int, tol: float | None) -> list[StepDiff]:
    """xpnet in ``dtype`` against the truth (torch in float64 from the same weights), with PyTorch's own error in
    ``dtype`` (its run, and a twin from weights one ulp up) as the yardstick; see docs/parity.md."""
    model, twin = twins(name, dtype, seed)
    exact = twins(name, np.float64, seed)[0]  # xpnet in float64: replays forwards to find decision flips
    nudged, truth = _nudged(twin), copy.deepcopy(twin).double()
    references = [twin, nudged, truth]
    opt, ref_optimizers = make_optimizer(optimizer, model, lr), [make_optimizer(optimizer, m, lr) for m in references]
    diffs, since, worst, flips, history = [], 0, np.zeros(4), [], []
    for step, (x, y) in enumerate(batches(steps, batch_size, dtype, seed), 1):
        state = random.get_state()
        history.append(_PreStep(state, x, *(_host_state(m) for m in (model, truth, twin))))
        exact_calls = _replay(exact, history[-1].ours, state, x)
        random.set_state(state)
        with recording_decisions(model) as our_calls:
            ours = _train_step(xpnet_pass, model, opt, x, y)
        snaps = []
        for module, ref_opt in zip(references, ref_optimizers):
            random.set_state(state)  # every run draws the same dropout masks
            snaps.append(_train_step(torch_pass, module, ref_opt, x.astype(np.float64) if module is truth else x, y))
        *theirs, reference = snaps
        since += 1
        drift = np.maximum(*(np.array(_errors(s, reference)) for s in theirs))
        worst = np.maximum(worst, drift)
        bound = tuple(DIVERGENCE_FACTOR * worst + (ROUNDING_ULPS * EPS32 * since if tol is None else tol))
        diff = StepDiff(*_errors(ours, reference), torch_loss=reference.loss, drift=tuple(drift), bound=bound,
                        flips=decision_flips(our_calls, exact_calls, step))
        flips += diff.flips
        if not _within_bound(diff):
            after = random.get_state()
            for i, pre in enumerate(history):
                if pre.drift_flips is None:
                    pre.drift_flips = drift_flips(exact, pre, step - since + 1 + i)
                    diff.flips = diff.flips + pre.drift_flips
            random.set_state(after)
            found = flips + [f for pre in history for f in pre.drift_flips]
            if found and all(f.near_tie for f in found):
                diff.explained = found
                _restart(model, opt, references, ref_optimizers, nudged)
                since, worst, flips, history = 0, np.zeros(4), [], []
        diffs.append(diff)
    return diffs


def _host_state(module: nn.Module | torch.nn.Module) -> dict[str, np.ndarray]:
    """A host copy of a model's state_dict."""
    return {k: np.array(to_numpy(v)) for k, v in module.state_dict().items()}


def _within_bound(d: StepDiff) -> bool:
    """Every error of a float32 step within its bound."""
    return all(getattr(d, q) <= b for q, b in zip(QUANTITIES, d.bound))


def within_tolerance(d: StepDiff, tol: float = TOLERANCES["float64"]) -> bool:
    """float64: each error of the step at most ``tol``. Below float64: each error within the step's ``bound``, or
    an excess explained by near-ties."""
    if d.bound is None:
        return all(getattr(d, q) <= tol for q in QUANTITIES)
    return _within_bound(d) or bool(d.explained)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xpnet.check", description=__doc__.splitlines()[0])
    parser.add_argument("--against", choices=["torch"], required=True, help="the framework to compare with")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model (default 20)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64")
    parser.add_argument("--optimizer", default="sgd,adam", help="sgd, adam or both comma-separated (default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=backend_names(), help="xpnet backend (default: the active one: "
                                                                   "XPNET_BACKEND, else numba if installed, else "
                                                                   "numpy)")
    parser.add_argument("--tol", type=float, help="float64: largest error allowed (default 1e-8); float32: the "
                                                  "absolute term of the bound (default 64 eps32 per step); "
                                                  "error = max|xpnet - reference| / max(1, max|reference|)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the models are "
                                                               "small enough that more threads only add overhead)")
    parser.add_argument("--per-step", action="store_true", help="print every step, not only the summary")
    args = parser.parse_args(argv)
    args.models, args.optimizer = args.models.split(","), args.optimizer.split(",")
    for value, known, what in ((args.models, MODELS, "model"), (args.optimizer, LEARNING_RATES, "optimizer")):
        unknown = [v for v in value if v not in known]
        if unknown:
            parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def _headroom(d: StepDiff) -> float:
    """The largest error of the step as a fraction of its bound (float32 only)."""
    return max(getattr(d, q) / b for q, b in zip(QUANTITIES, d.bound))


def _column(d: StepDiff, name: str) -> float:
    if name == "drift":
        return max(d.drift)
    return _headroom(d) if name == "/bound" else getattr(d, name)


def _header(args: argparse.Namespace, tol: float | None) -> list[str]:
    """The lines above the table: what runs against what, under which tolerance."""
    first = (f"xpnet ({get_backend().name}) vs PyTorch {torch.__version__}: {args.dtype}, {args.steps} steps, batch "
             f"{args.batch_size}, seed {args.seed}, {args.threads} torch thread(s), ")
    if args.dtype == "float64":
        return [first + f"tolerance {tol:g}",
                "max over steps of max|xpnet - torch| / max(1, max|torch|); params (with buffers) after each update"]
    term = f"{ROUNDING_ULPS:g} eps32 x step" if tol is None else f"{tol:g}"
    return [first + f"bound {DIVERGENCE_FACTOR:g} x drift + {term}",
            f"errors against torch float64 from the same weights (max over steps of max|xpnet - truth| / "
            f"max(1, max|truth|)); params (with buffers) after each update",
            "drift: PyTorch's own float32 error (its run, and a twin from weights one ulp up); /bound: the largest "
            "error as a fraction of its bound"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table; 0 if every step is within tolerance, else 1."""
    args = _parse(argv)
    if args.backend:
        use(args.backend)
    tol = (TOLERANCES["float64"] if args.dtype == "float64" else None) if args.tol is None else args.tol
    torch.set_num_threads(args.threads)
    print("\n".join(_header(args, tol)))
    columns = QUANTITIES + (("drift", "/bound") if args.dtype != "float64" else ())
    print(f"{'model':<8} {'optimizer':<9} " + " ".join(f"{q:>9}" for q in columns) + "  result")
    failed = False
    for name in args.models:
        for opt_name in args.optimizer:
            diffs = compare(name, args.steps, DTYPES[args.dtype], opt_name, args.batch_size, seed=args.seed,
                            tol=None if args.dtype == "float64" else args.tol)
            if args.per_step:
                for i, d in enumerate(diffs, 1):
                    print(f"  {name} {opt_name} step {i:>3}: loss {d.torch_loss:.6f}  "
                          + "  ".join(f"{q} {_column(d, q):.2e}" for q in columns))
            ok = all(within_tolerance(d, tol) for d in diffs)
            failed |= not ok
            explained = sum(bool(d.explained) for d in diffs)
            print(f"{name:<8} {opt_name:<9} " + " ".join(f"{max(_column(d, q) for d in diffs):9.2e}" for q in columns)
                  + ("  FAIL" if not ok else f"  ok ({explained} explained)" if explained else "  ok"))
            for step, d in enumerate(diffs, 1):
                shown = d.explained or (d.flips if args.per_step or not ok else [])
                for flip in shown[:MAX_FLIPS_SHOWN]:
                    print(f"    {flip}")
                if len(shown) > MAX_FLIPS_SHOWN:
                    print(f"    ... and {len(shown) - MAX_FLIPS_SHOWN} more flips")
                if d.explained:
                    print(f"    step {step} exceeds its bound, excused by the near-tie(s) above; references restarted "
                          "from xpnet's state")
                elif not within_tolerance(d, tol):
                    print(f"    step {step} exceeds its bound" + ("" if d.bound is None else
                                                                 " and no near-tie explains it"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
