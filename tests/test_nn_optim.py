"""Modules, initialisation, state dicts and the optimizers' update rules."""

import math

import numpy as np
import pytest

import xpnet
from xpnet import nn, optim


def test_parameters_are_registered_in_pytorch_order_and_names():
    model = xpnet.build_model("report1")
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "5.weight", "5.bias"]
    assert [p.shape for p in model.parameters()] == [(8, 1, 3, 3), (8,), (10, 1568), (10,)]


@pytest.mark.parametrize("name, count", [("report1", 8 * 9 + 8 + 15680 + 10),
                                         ("report2", 30 + 168 + 495 + 17650),
                                         ("lenet5", 156 + 2416 + 48120 + 10164 + 850)])
def test_named_models_have_the_specified_sizes(name, count):
    model = xpnet.build_model(name)
    assert sum(p.size for p in model.parameters()) == count
    out = model(xpnet.tensor(np.zeros((2, 1, 28, 28), np.float32)))
    assert out.shape == (2, 10)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*lenet5"):
        xpnet.build_model("vgg")


def test_init_bounds_follow_pytorch_fan_in_rule():
    conv = nn.Conv2D(3, 16, 5)
    bound = 1 / math.sqrt(3 * 25)
    w = conv.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(conv.bias.numpy()).max() <= bound
    assert w.dtype == np.float32


def test_same_seed_same_weights_different_seed_different():
    xpnet.manual_seed(3)
    a = xpnet.build_model("lenet5").state_dict()
    xpnet.manual_seed(3)
    b = xpnet.build_model("lenet5").state_dict()
    xpnet.manual_seed(4)
    c = xpnet.build_model("lenet5").state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_state_dict_round_trip_and_errors():
    source, target = xpnet.build_model("report1"), xpnet.build_model("report1")
    target.load_state_dict(source.state_dict())
    assert all(np.array_equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    state = source.state_dict()
    state["5.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"5\.weight.*\(3, 3\)"):
        target.load_state_dict(state)
    with pytest.raises(KeyError, match="missing keys.*0.bias"):
        target.load_state_dict({k: v for k, v in source.state_dict().items() if k != "0.bias"})
    with pytest.raises(KeyError, match="unexpected keys.*extra"):
        target.load_state_dict({**source.state_dict(), "extra": np.zeros(1)})


def test_train_eval_switches_dropout():
    model = nn.Sequential(nn.Dropout(0.5))
    x = xpnet.tensor(np.ones((4, 100), np.float32))
    model.eval()
    assert np.array_equal(model(x).numpy(), x.numpy())
    model.train()
    out = model(x).numpy()
    assert set(np.unique(out)) <= {0.0, 2.0} and (out == 0).any() and (out == 2).any()


def test_no_grad_records_nothing():
    w = xpnet.tensor(np.ones(3), requires_grad=True)
    with xpnet.no_grad():
        y = (w * 2).sum()
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_gradients_accumulate_until_zero_grad():
    w = nn.Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([w], lr=0.1)
    (w * w).sum().backward()
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad, [4.0, 8.0])
    opt.zero_grad()
    assert w.grad is None


def test_sgd_momentum_and_weight_decay_follow_pytorch_rule():
    w = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    expected, buf = np.array([1.0, -2.0]), None
    for _ in range(3):
        opt.zero_grad()
        (w * w).sum().backward()
        g = 2 * expected + 0.01 * expected
        buf = g if buf is None else 0.9 * buf + g
        expected = expected - 0.1 * buf
        opt.step()
        np.testing.assert_allclose(w.data, expected, rtol=1e-15)


def test_adam_bias_correction_counts_steps_per_parameter():
    """Two parameters, three steps: every parameter sees t = 1, 2, 3 (its own count, as PyTorch keeps it)."""
    a, b = nn.Parameter(np.array([0.5, -1.0])), nn.Parameter(np.array([2.0]))
    opt = optim.Adam([a, b], lr=0.01)
    ref = {id(a): [a.data.copy(), 0.0, 0.0], id(b): [b.data.copy(), 0.0, 0.0]}
    for t in range(1, 4):
        opt.zero_grad()
        ((a * a).sum() + (b * b * b).sum()).backward()
        for p, grad in ((a, 2 * ref[id(a)][0]), (b, 3 * ref[id(b)][0] ** 2)):
            x, m, v = ref[id(p)]
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            x = x - 0.01 / (1 - 0.9 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
            ref[id(p)] = [x, m, v]
        opt.step()
    np.testing.assert_allclose(a.data, ref[id(a)][0], rtol=1e-14)
    np.testing.assert_allclose(b.data, ref[id(b)][0], rtol=1e-14)
    assert opt.state[a]["step"] == opt.state[b]["step"] == 3


def test_optimizer_state_dict_round_trip_continues_identically():
    def run(split):
        xpnet.manual_seed(0)
        model = xpnet.build_model("lenet5")
        opt = optim.Adam(model.parameters(), lr=1e-3)
        x = xpnet.tensor(np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32))
        y = np.array([1, 2, 3, 4])
        for step in range(4):
            if step == split:
                weights, state = model.state_dict(), opt.state_dict()
                xpnet.manual_seed(99)
                model = xpnet.build_model("lenet5")
                model.load_state_dict(weights)
                opt = optim.Adam(model.parameters(), lr=1e-3)
                opt.load_state_dict(state)
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(x), y).backward()
            opt.step()
        return model.state_dict()

    straight, resumed = run(split=-1), run(split=2)
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


def test_cross_entropy_is_stable_at_large_logits():
    logits = xpnet.tensor(np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]]), requires_grad=True)
    loss = nn.CrossEntropyLoss()(logits, np.array([0, 1]))
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert np.isfinite(logits.grad).all()
    bad = nn.CrossEntropyLoss()(xpnet.tensor(np.array([[0.0, 1000.0]])), np.array([0]))
    assert bad.item() == pytest.approx(1000.0)


def test_failed_load_state_dict_changes_nothing():
    model = xpnet.build_model("report1")
    before = model.state_dict()
    state = {k: np.zeros_like(v) for k, v in before.items()}
    state["5.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="5.bias"):
        model.load_state_dict(state)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
