"""Parity check against PyTorch: ``python -m xpnet.check --against torch``.

For each named model, xpnet's model (``build_model`` after ``manual_seed``) and its PyTorch twin (``to_torch``:
same weights, same dtype) train side by side on the same seeded synthetic batches with the same optimizer.
Dropout draws its keep-masks from xpnet's generator in both frameworks (the generator is rewound before the torch
forward), so the units dropped are the same. Every step compares the loss, the logits, every parameter gradient
and, after the update, every entry of the state_dict: parameters and buffers (BatchNorm's running statistics and
batch count, in the "params" column); the largest differences are printed, and the exit status is 1 when one
exceeds the tolerance. In float32, where rounding noise can grow along a training run (Adam amplifies it in
near-zero gradients), the tolerance widens by the drift of torch's run from a twin whose initial weights are one
ulp larger: a difference xpnet cannot be asked to beat.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from xpnet import functional as F
from xpnet import nn, optim, random
from xpnet.autograd import get_default_dtype, set_default_dtype, tensor
from xpnet.backend import get_backend
from xpnet.interop.torch import MaskedDropout, to_numpy, to_torch
from xpnet.models import MODELS, build_model
from xpnet.random import manual_seed

DTYPES = {"float64": np.float64, "float32": np.float32}
LEARNING_RATES = {"sgd": 0.01, "adam": 1e-3}
# Largest ``error`` allowed (absolute up to magnitude 1, relative above); below float64, plus DRIFT_FACTOR times
# the drift of torch's run from its one-ulp-nudged twin, since rounding noise can grow as training goes on.
TOLERANCES = {"float64": 1e-8, "float32": 1e-4}
DRIFT_FACTOR = 10.0
QUANTITIES = ("loss", "logits", "grads", "params")


@dataclass
class StepDiff:
    """The ``error`` of xpnet against torch in one training step (params: after the update), torch's loss, and
    (below float64) ``drift``: the same four errors of torch's run against torch's run from weights one ulp up."""

    loss: float
    logits: float
    grads: float
    params: float
    torch_loss: float
    drift: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass
class Snapshot:
    """One framework's view of one training step, as host arrays keyed by PyTorch's names (params: the whole
    state_dict, parameters and buffers)."""

    loss: float
    logits: np.ndarray
    grads: dict[str, np.ndarray]
    params: dict[str, np.ndarray] = field(default_factory=dict)


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


def _nudged(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every parameter moved to the next representable value up."""
    nudged = copy.deepcopy(module)
    with torch.no_grad():
        for p in nudged.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
    return nudged


def compare(name: str, steps: int = 20, dtype: Any = np.float64, optimizer: str = "sgd", batch_size: int = 16,
            lr: float | None = None, seed: int = 0) -> list[StepDiff]:
    """Train model ``name`` in xpnet and in PyTorch side by side for ``steps`` steps; one StepDiff per step.

    Below float64 a third run, torch from every initial weight nudged one ulp up, measures how fast rounding-size
    differences grow along this trajectory; ``StepDiff.drift`` carries it.
    """
    model, twin = twins(name, dtype, seed)
    runs = [(xpnet_pass, model), (torch_pass, twin)]
    if np.dtype(dtype) != np.float64:
        runs.append((torch_pass, _nudged(twin)))
    optimizers = [make_optimizer(optimizer, m, lr) for _, m in runs]
    diffs = []
    for x, y in batches(steps, batch_size, dtype, seed):
        state = random.get_state()
        snaps = []
        for (run_pass, m), opt in zip(runs, optimizers):
            random.set_state(state)  # every run draws the same dropout masks
            opt.zero_grad()
            snap = run_pass(m, x, y)
            opt.step()
            snap.params = {k: np.array(to_numpy(v)) for k, v in m.state_dict().items()}
            snaps.append(snap)
        ours, theirs, *reference = snaps
        drift = _errors(theirs, reference[0]) if reference else (0.0, 0.0, 0.0, 0.0)
        diffs.append(StepDiff(*_errors(ours, theirs), torch_loss=theirs.loss, drift=drift))
    return diffs


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xpnet.check", description=__doc__.splitlines()[0])
    parser.add_argument("--against", choices=["torch"], required=True, help="the framework to compare with")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names (default: all)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model (default 20)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64")
    parser.add_argument("--optimizer", default="sgd,adam", help="sgd, adam or both comma-separated (default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, help="largest error allowed (default 1e-8 float64, 1e-4 float32); "
                                                  "error = max|xpnet - torch| / max(1, max|torch|)")
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


def within_tolerance(d: StepDiff, tol: float) -> bool:
    """Each error of the step at most ``tol`` plus DRIFT_FACTOR times torch's own drift in that quantity."""
    return all(getattr(d, q) <= tol + DRIFT_FACTOR * drift for q, drift in zip(QUANTITIES, d.drift))


def _column(d: StepDiff, name: str) -> float:
    return max(d.drift) if name == "drift" else getattr(d, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table; 0 if every step is within tolerance, else 1."""
    args = _parse(argv)
    tol = TOLERANCES[args.dtype] if args.tol is None else args.tol
    torch.set_num_threads(args.threads)
    print(f"xpnet vs PyTorch {torch.__version__}: {args.dtype}, {args.steps} steps, batch {args.batch_size}, "
          f"seed {args.seed}, {args.threads} torch thread(s), tolerance {tol:g}"
          + (f" + {DRIFT_FACTOR:g} x drift" if args.dtype != "float64" else ""))
    print("max over steps of max|xpnet - torch| / max(1, max|torch|); params (with buffers) compared after each "
          "update"
          + ("; drift: torch vs torch from weights one ulp up" if args.dtype != "float64" else ""))
    columns = QUANTITIES + (("drift",) if args.dtype != "float64" else ())
    print(f"{'model':<8} {'optimizer':<9} " + " ".join(f"{q:>9}" for q in columns) + "  result")
    failed = False
    for name in args.models:
        for opt_name in args.optimizer:
            diffs = compare(name, args.steps, DTYPES[args.dtype], opt_name, args.batch_size, seed=args.seed)
            if args.per_step:
                for i, d in enumerate(diffs, 1):
                    print(f"  {name} {opt_name} step {i:>3}: loss {d.torch_loss:.6f}  "
                          + "  ".join(f"{q} {_column(d, q):.2e}" for q in columns))
            ok = all(within_tolerance(d, tol) for d in diffs)
            failed |= not ok
            print(f"{name:<8} {opt_name:<9} " + " ".join(f"{max(_column(d, q) for d in diffs):9.2e}" for q in columns)
                  + ("  ok" if ok else "  FAIL"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
