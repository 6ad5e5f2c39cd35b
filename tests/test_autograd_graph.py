"""The autograd graph keeps what backward needs and nothing more: an intermediate result that no backward saved is
freed as soon as the forward is done with it (as in PyTorch), and saved arrays are freed as backward uses them."""

import gc
import weakref

import numpy as np
import pytest

import xpnet
from xpnet import functional as F
from xpnet import nn


def test_an_intermediate_no_backward_saved_is_freed_after_the_forward():
    x = xpnet.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    h = x * 3.0 + 1.0  # Add saves nothing; the ReLU below saves its output, not its input
    alive = weakref.ref(h.data)
    y = h.relu()
    del h
    gc.collect()
    assert alive() is None, "the graph kept an activation alive that no backward needs"
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.where(x.data * 3.0 + 1.0 > 0, 3.0, 0.0))


def test_a_models_hidden_activations_are_freed_when_only_the_loss_is_kept():
    """Of a Linear -> ReLU -> Linear stack, the first Linear's output is saved by nothing (ReLU keeps its own
    output), so once the forward is done no reference to it remains."""
    xpnet.manual_seed(0)
    seen: list[weakref.ref] = []
    first, second = nn.Linear(4, 8), nn.Linear(8, 2)
    first.register_forward_hook(lambda module, inputs, out: seen.append(weakref.ref(out.data)))
    model = nn.Sequential(first, nn.ReLU(), second)
    loss = model(xpnet.tensor(np.ones((5, 4), dtype=np.float32))).sum()
    gc.collect()
    assert seen and seen[0]() is None
    loss.backward()
    assert first.weight.grad is not None and second.weight.grad is not None


def test_a_tensor_used_twice_gets_both_gradients():
    x = xpnet.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    h = x * 2.0
    (h * h + h).sum().backward()
    np.testing.assert_allclose(x.grad, 8 * x.data + 2)


def test_backward_through_a_used_graph_again_is_one_clear_error():
    x = xpnet.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward\\(\\) through the graph a second time: Sum's saved arrays"):
        y.backward()


def test_leaves_and_non_leaves():
    x = xpnet.tensor(np.ones(3), requires_grad=True)
    y = x * 2.0
    assert x.is_leaf and not y.is_leaf
    with xpnet.no_grad():
        assert (x * 2.0).is_leaf


def test_an_array_given_where_a_tensor_is_expected_is_one_clear_error():
    model = xpnet.build_model("lenet5")
    with pytest.raises(TypeError, match=r"^Conv2d: expected xpnet Tensors as inputs, got a numpy\.ndarray; wrap an "
                                        r"array with xpnet\.tensor\(x\)$"):
        model(np.zeros((2, 1, 28, 28), dtype=np.float32))
    with pytest.raises(TypeError, match="got a builtins.list"):
        F.leaky_relu([1.0, -1.0])
