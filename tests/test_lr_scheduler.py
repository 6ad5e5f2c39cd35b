"""Learning-rate schedulers against torch.optim.lr_scheduler: the lr (and OneCycle's momentum / beta1) sequence of
every scheduler over 100 steps, the initial step, state_dict round trips mid-run, and the errors."""

import json
import warnings

import numpy as np
import pytest
import torch

import xpnet
from xpnet import nn, optim
from xpnet.checkpoint import load_checkpoint, save_checkpoint
from xpnet.optim import lr_scheduler

STEPS = 100
LRS = (0.1, 0.03)  # two parameter groups with different learning rates


def optimizer_pair(name, **hyper):
    """The same two-group optimizer in xpnet and in torch (float64 parameters, one each)."""
    ours = [nn.Parameter(np.ones(2)) for _ in LRS]
    theirs = [torch.ones(2, dtype=torch.float64, requires_grad=True) for _ in LRS]
    return (getattr(optim, name)([{"params": [p], "lr": lr} for p, lr in zip(ours, LRS)], **hyper),
            getattr(torch.optim, name)([{"params": [p], "lr": lr} for p, lr in zip(theirs, LRS)], **hyper))


def build(lib, opt, spec):
    """``spec`` is (class name, kwargs); SequentialLR's kwargs hold specs of the schedulers it wraps."""
    name, kwargs = spec
    if name == "SequentialLR":
        inner = [build(lib, opt, s) for s in kwargs["schedulers"]]
        return lib.SequentialLR(opt, inner, milestones=kwargs["milestones"])
    return getattr(lib, name)(opt, **kwargs)


SCHEDULES = {
    "step": ("SGD", ("StepLR", dict(step_size=7))),
    "step-gamma": ("SGD", ("StepLR", dict(step_size=3, gamma=0.9))),
    "multistep": ("SGD", ("MultiStepLR", dict(milestones=[10, 25, 25, 60], gamma=0.5))),
    "exponential": ("Adam", ("ExponentialLR", dict(gamma=0.97))),
    "cosine": ("SGD", ("CosineAnnealingLR", dict(T_max=100))),
    "cosine-restart": ("SGD", ("CosineAnnealingLR", dict(T_max=30, eta_min=1e-3))),
    "linear": ("SGD", ("LinearLR", dict())),
    "linear-decay": ("AdamW", ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=80))),
    "warmup-cosine": ("SGD", ("SequentialLR", dict(
        schedulers=[("LinearLR", dict(start_factor=0.01, total_iters=10)), ("CosineAnnealingLR", dict(T_max=90))],
        milestones=[10]))),
    "warmup-step-exp": ("Adam", ("SequentialLR", dict(
        schedulers=[("LinearLR", dict(start_factor=0.1, total_iters=5)), ("StepLR", dict(step_size=10)),
                    ("ExponentialLR", dict(gamma=0.95))], milestones=[5, 40]))),
    "warmup-multistep": ("SGD", ("SequentialLR", dict(
        schedulers=[("ExponentialLR", dict(gamma=1.1)), ("MultiStepLR", dict(milestones=[20, 50]))],
        milestones=[8]))),
    "onecycle-sgd": ("SGD", ("OneCycleLR", dict(max_lr=[0.5, 0.2], total_steps=STEPS))),
    "onecycle-linear-3phase": ("SGD", ("OneCycleLR", dict(max_lr=0.5, epochs=10, steps_per_epoch=10,
                                                           anneal_strategy="linear", three_phase=True,
                                                           base_momentum=[0.8, 0.7], max_momentum=0.9))),
    "onecycle-adam": ("Adam", ("OneCycleLR", dict(max_lr=0.01, total_steps=STEPS, pct_start=0.25))),
    "onecycle-adamw-3phase": ("AdamW", ("OneCycleLR", dict(max_lr=0.01, total_steps=STEPS, three_phase=True,
                                                           div_factor=10.0, final_div_factor=100.0))),
    "onecycle-no-momentum": ("Adam", ("OneCycleLR", dict(max_lr=0.01, total_steps=STEPS, cycle_momentum=False))),
}


def hyper_of(opt):
    """Each group's lr and momentum (or beta1): what a scheduler drives."""
    return [(g["lr"], g.get("momentum", g.get("betas", (None,))[0])) for g in opt.param_groups]


def assert_close(ours, theirs, what):
    for (lr, m), (t_lr, t_m) in zip(ours, theirs):
        assert lr == pytest.approx(t_lr, rel=1e-12, abs=1e-300), what
        assert (m is None and t_m is None) or m == pytest.approx(t_m, rel=1e-12), what


@pytest.mark.parametrize("case", SCHEDULES)
def test_sequence_matches_torch(case):
    name, spec = SCHEDULES[case]
    ours_opt, torch_opt = optimizer_pair(name)
    ours, theirs = build(lr_scheduler, ours_opt, spec), build(torch.optim.lr_scheduler, torch_opt, spec)
    assert [g["initial_lr"] for g in ours_opt.param_groups] == [g["initial_lr"] for g in torch_opt.param_groups]
    for step in range(STEPS):
        assert_close(hyper_of(ours_opt), hyper_of(torch_opt), f"step {step}")
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
        ours_opt.step()
        torch_opt.step()
        ours.step()
        theirs.step()
    assert ours.last_epoch == theirs.last_epoch


def test_the_sequences_are_not_constant():
    """Guard against comparing two flat lines: every schedule above moves the lr."""
    for case, (name, spec) in SCHEDULES.items():
        opt, _ = optimizer_pair(name)
        scheduler = build(lr_scheduler, opt, spec)
        seen = set()
        for _ in range(STEPS - 1):
            opt.step()
            scheduler.step()
            seen.add(opt.param_groups[0]["lr"])
        assert len(seen) > 2, case


@pytest.mark.parametrize("case", ["multistep", "cosine-restart", "warmup-cosine", "warmup-step-exp",
                                  "onecycle-sgd", "onecycle-adamw-3phase"])
@pytest.mark.parametrize("through_json", [False, True], ids=["in memory", "via checkpoint"])
def test_state_dict_mid_run_continues_identically(case, through_json, tmp_path):
    """Save optimizer + scheduler at step 40, load them into fresh objects (the scheduler built first, as
    torch advises) and continue: lrs, momenta and parameters equal the uninterrupted run's, bit for bit."""
    name, spec = SCHEDULES[case]
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(2) for _ in LRS] for _ in range(STEPS - 1)]

    def fresh():
        opt = getattr(optim, name)([{"params": [nn.Parameter(np.ones(2))], "lr": lr} for lr in LRS])
        return opt, build(lr_scheduler, opt, spec)

    def run(split):
        opt, scheduler = fresh()
        trace = []
        for step, g in enumerate(grads):
            if step == split:
                weights = [p.data.copy() for p in opt.params]
                saved_opt, saved_sched = opt.state_dict(), scheduler.state_dict()
                if through_json:
                    save_checkpoint(tmp_path / "c.npz", {str(i): w for i, w in enumerate(weights)}, saved_opt,
                                    {"scheduler": saved_sched})
                    loaded = load_checkpoint(tmp_path / "c.npz")
                    saved_opt, saved_sched = loaded.optimizer, loaded.record["scheduler"]
                    weights = [loaded.weights[str(i)] for i in range(len(weights))]
                opt, scheduler = fresh()
                for p, w in zip(opt.params, weights):
                    p.data = w.copy()
                opt.load_state_dict(saved_opt)
                scheduler.load_state_dict(saved_sched)
            for p, gi in zip(opt.params, g):
                p.grad = gi
            opt.step()
            scheduler.step()
            trace.append((hyper_of(opt), [p.data.copy() for p in opt.params]))
        return trace

    straight, resumed = run(-1), run(40)
    for (h, params), (h2, params2) in zip(straight, resumed):
        assert h == h2
        for a, b in zip(params, params2):
            np.testing.assert_array_equal(a, b)


def test_state_dict_is_json_and_keys_follow_torch():
    opt, torch_opt = optimizer_pair("SGD")
    spec = SCHEDULES["warmup-multistep"][1]
    ours, theirs = build(lr_scheduler, opt, spec), build(torch.optim.lr_scheduler, torch_opt, spec)
    state = ours.state_dict()
    json.dumps(state)
    assert set(state) == set(theirs.state_dict())
    inner, torch_inner = state["_schedulers"][1], theirs.state_dict()["_schedulers"][1]
    assert set(inner) == set(torch_inner) - {"_get_lr_called_within_step"}
    assert inner["milestones"] == torch_inner["milestones"] and inner["base_lrs"] == torch_inner["base_lrs"]


def test_scheduler_writes_initial_lr_and_keeps_an_existing_one():
    opt, torch_opt = optimizer_pair("SGD")
    opt.param_groups[1]["initial_lr"] = torch_opt.param_groups[1]["initial_lr"] = 0.5
    ours = lr_scheduler.StepLR(opt, step_size=2)
    theirs = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2)
    assert ours.base_lrs == theirs.base_lrs == [0.1, 0.5]
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in torch_opt.param_groups] == [0.1, 0.03]
    assert ours.last_epoch == theirs.last_epoch == 0


def test_resuming_needs_initial_lr():
    opt, _ = optimizer_pair("SGD")
    with pytest.raises(KeyError, match=r"param_groups\[0\] has no 'initial_lr'.*last_epoch=5"):
        lr_scheduler.StepLR(opt, step_size=2, last_epoch=5)


def test_warns_when_stepped_before_the_optimizer():
    opt, torch_opt = optimizer_pair("SGD")
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        lr_scheduler.StepLR(opt, 2).step()
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        torch.optim.lr_scheduler.StepLR(torch_opt, 2).step()
    opt.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr_scheduler.StepLR(opt, 2).step()
    assert [str(w.message) for w in caught] == []


def test_onecycle_refuses_to_step_past_total_steps():
    """Like torch: last_epoch may reach total_steps (one step more than the cycle uses), not go past it."""
    for lib, opt in zip((lr_scheduler, torch.optim.lr_scheduler), optimizer_pair("SGD")):
        scheduler = lib.OneCycleLR(opt, max_lr=0.1, total_steps=3)
        for _ in range(3):
            opt.step()
            scheduler.step()
        with pytest.raises(ValueError, match="Tried to step 4 times. The specified number of total steps is 3"):
            scheduler.step()


def test_onecycle_sets_momentum_even_for_sgd_without_momentum():
    """As in torch: the cycle writes the group's momentum, so plain SGD becomes SGD with momentum."""
    opt, torch_opt = optimizer_pair("SGD")
    lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    torch.optim.lr_scheduler.OneCycleLR(torch_opt, max_lr=0.1, total_steps=10)
    assert hyper_of(opt) == hyper_of(torch_opt) and opt.param_groups[0]["momentum"] == 0.95


def test_import_paths():
    from xpnet.optim.lr_scheduler import SequentialLR

    assert xpnet.optim.lr_scheduler is xpnet.lr_scheduler and SequentialLR is lr_scheduler.SequentialLR


def sgd():
    return optim.SGD([nn.Parameter(np.ones(1))], lr=0.1)


@pytest.mark.parametrize("make, error, message", [
    (lambda: lr_scheduler.StepLR(object(), 3), TypeError, "expected an xpnet Optimizer, got object"),
    (lambda: lr_scheduler.StepLR(sgd(), 0), ValueError, "step_size: expected a positive integer, got 0"),
    (lambda: lr_scheduler.StepLR(sgd(), 2.5), ValueError, "step_size: expected a positive integer"),
    (lambda: lr_scheduler.MultiStepLR(sgd(), [30, 10]), ValueError, "milestones: expected non-decreasing"),
    (lambda: lr_scheduler.MultiStepLR(sgd(), [-1, 10]), ValueError, "milestones"),
    (lambda: lr_scheduler.CosineAnnealingLR(sgd(), 0), ValueError, "T_max: expected a positive number"),
    (lambda: lr_scheduler.LinearLR(sgd(), start_factor=0), ValueError, r"start_factor: expected a number in \(0, 1\]"),
    (lambda: lr_scheduler.LinearLR(sgd(), end_factor=1.5), ValueError, r"end_factor: expected a number in \[0, 1\]"),
    (lambda: lr_scheduler.LinearLR(sgd(), total_iters=0), ValueError, "total_iters: expected a positive integer"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1), ValueError, "needs total_steps, or both epochs and steps_per_epoch"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1, epochs=3), ValueError, "needs total_steps"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1, total_steps=0), ValueError, "total_steps: expected a positive"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1, epochs=2, steps_per_epoch=-1), ValueError, "steps_per_epoch"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1, 10, pct_start=1.5), ValueError, r"pct_start: expected a number in"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), 0.1, 10, anneal_strategy="exp"), ValueError, "'cos' or 'linear'"),
    (lambda: lr_scheduler.OneCycleLR(sgd(), [0.1, 0.2], 10), ValueError, r"max_lr: expected 1 values"),
])
def test_bad_arguments_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_sequential_lr_bad_arguments():
    opt, other = sgd(), sgd()
    a, b = lr_scheduler.LinearLR(opt), lr_scheduler.ExponentialLR(opt, 0.9)
    with pytest.raises(ValueError, match="milestones: expected 1 .*got 2"):
        lr_scheduler.SequentialLR(opt, [a, b], milestones=[5, 10])
    with pytest.raises(ValueError, match="milestones: expected increasing epoch numbers > 0"):
        lr_scheduler.SequentialLR(opt, [a, b, lr_scheduler.StepLR(opt, 2)], milestones=[10, 5])
    with pytest.raises(ValueError, match="at least one scheduler"):
        lr_scheduler.SequentialLR(opt, [], milestones=[])
    with pytest.raises(ValueError, match=r"schedulers\[1\] \(StepLR\) schedules another optimizer"):
        lr_scheduler.SequentialLR(opt, [a, lr_scheduler.StepLR(other, 2)], milestones=[3])


def test_load_state_dict_of_another_scheduler_is_refused():
    opt = sgd()
    cosine, step = lr_scheduler.CosineAnnealingLR(opt, 10), lr_scheduler.StepLR(opt, 3)
    before = step.state_dict()
    with pytest.raises(ValueError, match=r"StepLR.load_state_dict.*missing \['gamma', 'step_size'\].*"
                                         r"unexpected \['T_max', 'eta_min'\]"):
        step.load_state_dict(cosine.state_dict())
    assert step.state_dict() == before
