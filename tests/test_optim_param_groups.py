"""Optimizers against PyTorch (float64): param_groups, per-group hyper-parameters, per-parameter state, step
counting, state_dict round trips and the errors for bad arguments or a state that does not fit."""

import inspect
import json
import re

import numpy as np
import pytest
import torch

from xpnet import nn, optim
from xpnet.checkpoint import CheckpointError, load_checkpoint, restore_optimizer, save_checkpoint

SHAPES = [(3, 4), (4,), (2, 3, 2)]
STEPS = 20


def make_pair(seed=0):
    """The same starting values as xpnet Parameters and as torch leaf tensors (float64)."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(shape) for shape in SHAPES]
    return ([nn.Parameter(v.copy()) for v in values],
            [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values])


def gradients(seed=1):
    """STEPS rounds of gradients, with the middle parameter skipped every third step (its state must not move)."""
    rng = np.random.default_rng(seed)
    return [[None if (i == 1 and t % 3 == 2) else rng.standard_normal(shape) for i, shape in enumerate(SHAPES)]
            for t in range(STEPS)]


def grouped(params, groups):
    """``groups``: None for one plain list, else a list of (indices, hyper-parameters) dicts."""
    if groups is None:
        return params
    return [{"params": [params[i] for i in indices], **hyper} for indices, hyper in groups]


def step_both(ours, theirs, ours_params, torch_params, grads):
    for p, q, g in zip(ours_params, torch_params, grads):
        p.grad = None if g is None else g.copy()
        q.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
    ours.step()
    theirs.step()


def assert_same_params(ours_params, torch_params, rtol=1e-12):
    for p, q in zip(ours_params, torch_params):
        expected = q.detach().numpy()
        np.testing.assert_allclose(p.data, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


CASES = {
    "sgd": ("SGD", dict(lr=0.1), None),
    "sgd-momentum": ("SGD", dict(lr=0.05, momentum=0.9), None),
    "sgd-dampening-wd": ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01), None),
    "sgd-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), None),
    "sgd-maximize": ("SGD", dict(lr=0.05, momentum=0.5, maximize=True), None),
    "sgd-groups": ("SGD", dict(lr=0.1, momentum=0.9),
                   [([0], dict(lr=0.01, weight_decay=0.1)), ([1, 2], dict(momentum=0.5, nesterov=True))]),
    "adam": ("Adam", dict(lr=0.01), None),
    "adam-l2": ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), None),
    "adam-amsgrad": ("Adam", dict(lr=0.01, amsgrad=True), None),
    "adam-groups": ("Adam", dict(lr=0.01),
                    [([2, 0], dict(lr=0.001, weight_decay=0.05)), ([1], dict(betas=(0.5, 0.9), maximize=True))]),
    "adamw": ("AdamW", dict(lr=0.01), None),
    "adamw-wd-amsgrad": ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True), None),
    "adamw-groups": ("AdamW", dict(lr=0.01, weight_decay=0.1),
                     [([0, 1], dict(weight_decay=0.0)), ([2], dict(lr=0.03, betas=(0.95, 0.9)))]),
}


@pytest.mark.parametrize("case", CASES)
def test_twenty_steps_match_torch(case):
    name, hyper, groups = CASES[case]
    ours_params, torch_params = make_pair()
    ours = getattr(optim, name)(grouped(ours_params, groups), **hyper)
    theirs = getattr(torch.optim, name)(grouped(torch_params, groups), **hyper)
    for grads in gradients():
        step_both(ours, theirs, ours_params, torch_params, grads)
        assert_same_params(ours_params, torch_params)
    assert_same_state(ours.state_dict(), theirs.state_dict())


def assert_same_state(ours, theirs):
    """Same parameter numbering, hyper-parameters (those xpnet has) and buffers, step counts included."""
    assert len(ours["param_groups"]) == len(theirs["param_groups"])
    for mine, reference in zip(ours["param_groups"], theirs["param_groups"]):
        assert mine == {k: reference[k] for k in mine}
    assert ours["state"].keys() == theirs["state"].keys()
    for index, buffers in ours["state"].items():
        assert buffers.keys() == theirs["state"][index].keys()
        for key, value in buffers.items():
            np.testing.assert_allclose(value, theirs["state"][index][key].numpy(), rtol=1e-12, atol=1e-300)


def test_adam_step_is_per_parameter():
    """A parameter without a gradient at a step does not advance its own step count (torch's rule)."""
    params, _ = make_pair()
    opt = optim.Adam(params)
    for grads in gradients()[:6]:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    assert [opt.state[p]["step"] for p in params] == [6.0, 4.0, 6.0]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_signatures_match_torch(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for arg, parameter in ours.items():
        assert arg in theirs, arg
        assert parameter.kind == theirs[arg].kind, arg
        assert parameter.default == theirs[arg].default, arg
    positional = [a for a, p in theirs.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [a for a, p in ours.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional


def test_missing_group_values_come_from_defaults_and_the_group_values_are_used():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.0}], lr=0.5, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[1]["lr"] == 0.0
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["params"] == [b]
    a.grad, b.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 0.5])
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    opt.param_groups[0]["lr"] = 0.25  # what a scheduler does
    opt.step()
    np.testing.assert_array_equal(a.data, 0.5 - 0.25 * (0.9 + 1))


def test_lr_and_params_properties():
    a, b, c = (nn.Parameter(np.zeros(1)) for _ in range(3))
    opt = optim.Adam([a, b], lr=0.1)
    assert opt.lr == 0.1 and opt.params == [a, b]
    opt.lr = 0.2
    assert opt.param_groups[0]["lr"] == 0.2
    opt.add_param_group({"params": [c], "lr": 0.3})
    assert opt.params == [a, b, c] and opt.param_groups[1]["betas"] == (0.9, 0.999)
    assert opt.lr == 0.2
    with pytest.raises(AttributeError, match="2 parameter groups"):
        opt.lr = 0.5


def test_duplicate_and_bad_parameters_are_refused():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [a]}, {"params": [b, a]}])
    opt = optim.SGD([a])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([a, a])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([])
    with pytest.raises(TypeError, match="not a set"):
        optim.SGD({a, b})
    with pytest.raises(TypeError, match="only optimize Tensors, got ndarray"):
        optim.SGD([np.zeros(1)])
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(a)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([a * 2])


@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), "lr: expected a number >= 0, got -0.1"),
    (lambda p: optim.SGD(p, momentum=-1), "momentum: expected a number >= 0"),
    (lambda p: optim.SGD(p, weight_decay=-1e-4), "weight_decay: expected a number >= 0"),
    (lambda p: optim.SGD(p, nesterov=True), "nesterov=True needs momentum > 0 and dampening = 0"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
    (lambda p: optim.SGD([{"params": p, "lr": -1.0}], lr=0.1), r"param_groups\[0\]: lr: expected"),
    (lambda p: optim.Adam(p, lr=float("nan")), "lr: expected a number >= 0, got nan"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"betas: expected two numbers in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=(0.9,)), "betas"),
    (lambda p: optim.Adam(p, eps=-1e-8), "eps: expected a number >= 0"),
    (lambda p: optim.AdamW(p, weight_decay=-0.01), "weight_decay: expected a number >= 0"),
    (lambda p: optim.AdamW(p, lr="0.1"), "lr: expected a number >= 0, got '0.1'"),
])
def test_bad_hyper_parameters_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(np.zeros(2))])


@pytest.mark.parametrize("case", ["sgd-groups", "adam-groups", "adamw-wd-amsgrad"])
def test_state_dict_round_trip_mid_run_continues_identically(case):
    name, hyper, groups = CASES[case]
    all_grads = gradients()

    def run(split):
        params, _ = make_pair()
        opt = getattr(optim, name)(grouped(params, groups), **hyper)
        for t, grads in enumerate(all_grads):
            if t == split:
                state, values = opt.state_dict(), [p.data.copy() for p in params]
                params = [nn.Parameter(v) for v in values]
                opt = getattr(optim, name)(grouped(params, groups), lr=123.0)  # hyper-parameters come from state
                opt.load_state_dict(state)
                assert opt.state_dict()["param_groups"] == state["param_groups"]
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        return [p.data for p in params]

    for straight, resumed in zip(run(split=-1), run(split=STEPS // 2)):
        np.testing.assert_array_equal(straight, resumed)


def test_state_dict_holds_copies():
    params, _ = make_pair()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    state = opt.state_dict()
    saved = state["state"][0]["momentum_buffer"].copy()
    opt.step()
    np.testing.assert_array_equal(state["state"][0]["momentum_buffer"], saved)
    opt.load_state_dict(state)
    opt.step()
    np.testing.assert_array_equal(state["state"][0]["momentum_buffer"], saved)


def mismatch_cases():
    def fresh(groups=None, shapes=SHAPES, cls=optim.Adam):
        params = [nn.Parameter(np.zeros(s)) for s in shapes]
        return cls(grouped(params, groups), lr=0.1)

    source = fresh()
    for p in source.params:
        p.grad = np.ones(p.shape)
    source.step()
    state = source.state_dict()
    return [
        (fresh([([0], {}), ([1, 2], {})]), state, "1 parameter groups, this optimizer has 2"),
        (fresh(shapes=SHAPES[:2]), state, r"param_groups\[0\] holds 3 parameters in the loaded state, 2 in this"),
        (fresh(shapes=[(3, 4), (5,), (2, 3, 2)]), state, r"state of parameter 1 \(exp_avg\) has shape \(4,\), the "
                                                         r"parameter has shape \(5,\)"),
        (fresh(cls=optim.SGD), optim.SGD([nn.Parameter(np.zeros(s)) for s in SHAPES]).state_dict() | {
            "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]}, "lacks dampening, maximize, momentum"),
        (fresh(), {"state": {7: {}}, "param_groups": state["param_groups"]}, "entry for parameter 7"),
    ]


@pytest.mark.parametrize("index", range(5))
def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(index):
    target, state, message = mismatch_cases()[index]
    before = target.state_dict()
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(state)
    after = target.state_dict()
    assert after["param_groups"] == before["param_groups"] and after["state"].keys() == before["state"].keys()


def test_zero_grad_set_to_none_or_zeros():
    a = nn.Parameter(np.ones(3))
    opt = optim.SGD([a])
    a.grad = np.ones(3)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    opt.zero_grad()
    assert a.grad is None


def test_step_returns_the_closure_loss():
    a = nn.Parameter(np.array([2.0]))
    opt = optim.SGD([a], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (a * a).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    np.testing.assert_allclose(a.data, [2.0 - 0.1 * 4.0])


def test_float32_parameters_stay_float32():
    a = nn.Parameter(np.ones(3, np.float32))
    opt = optim.AdamW([a], weight_decay=0.1)
    a.grad = np.full(3, 0.5, np.float32)
    opt.step()
    assert a.data.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state_dict()["state"][0].values() if isinstance(v, np.ndarray))


def stepped(cls, groups=None, shapes=SHAPES, steps=3, **hyper):
    params = [nn.Parameter(np.random.default_rng(i).standard_normal(s)) for i, s in enumerate(shapes)]
    opt = cls(grouped(params, groups), **hyper)
    for t in range(steps):
        for p in params:
            p.grad = np.full(p.shape, 0.1 * (t + 1))
        opt.step()
    return opt


def test_checkpoint_stores_hyper_parameters_as_json_and_buffers_as_arrays(tmp_path):
    source = stepped(optim.AdamW, [([0, 2], dict(lr=0.01)), ([1], dict(betas=(0.8, 0.9), amsgrad=True))])
    save_checkpoint(tmp_path / "c.npz", {}, source.state_dict(), {"epoch": 1})
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        meta = json.loads(str(data["meta.json"]))
        assert sorted(k for k in data.files if k.startswith("optim/")) == sorted(
            [f"optim/{i}/{name}" for i in range(3) for name in ("exp_avg", "exp_avg_sq")] + ["optim/2/max_exp_avg_sq"])
    assert meta["optimizer"]["param_groups"][1]["betas"] == [0.8, 0.9]
    assert meta["optimizer"]["state"]["0"] == {"step": 3.0}
    target = stepped(optim.AdamW, [([0, 2], {}), ([1], dict(amsgrad=True))], steps=0)
    restore_optimizer(target, load_checkpoint(tmp_path / "c.npz"), tmp_path / "c.npz")
    assert target.param_groups[1]["betas"] == (0.8, 0.9)
    restored, saved = target.state_dict(), source.state_dict()
    assert restored["param_groups"] == saved["param_groups"] and restored["state"].keys() == saved["state"].keys()
    for index, buffers in saved["state"].items():
        assert restored["state"][index].keys() == buffers.keys()
        for name, value in buffers.items():
            np.testing.assert_array_equal(restored["state"][index][name], value)


@pytest.mark.parametrize("target, message", [
    (lambda: stepped(optim.Adam, [([0], {}), ([1, 2], {})], steps=0), "1 parameter groups, this optimizer has 2"),
    (lambda: stepped(optim.Adam, shapes=SHAPES[:2], steps=0), "holds 3 parameters in the loaded state, 2 in this"),
    (lambda: stepped(optim.Adam, shapes=[(3, 4), (4,), (2, 3)], steps=0), r"parameter 2 \(exp_avg\) has shape "
                                                                          r"\(2, 3, 2\), the parameter has shape"),
    (lambda: stepped(optim.SGD, steps=0), "lacks dampening, momentum, nesterov: it was saved by another optimizer"),
])
def test_restoring_a_checkpoint_that_does_not_fit_names_file_and_difference(tmp_path, target, message):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {}, stepped(optim.Adam).state_dict(), {})
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: its optimizer state does not fit "
                                              f".*{message}"):
        restore_optimizer(target(), load_checkpoint(path), path)


def test_checkpoint_of_the_old_optimizer_format_is_refused(tmp_path):
    path = tmp_path / "old.npz"
    np.savez(path, **{"meta.json": np.array(json.dumps({"record": {}, "optimizer": {"hyper": {}, "step_count": 3,
                                                                                    "n_params": 0}}))})
    with pytest.raises(CheckpointError, match="older xpnet"):
        load_checkpoint(path)
