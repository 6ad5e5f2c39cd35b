"""Module.register_forward_hook: PyTorch's forward hooks (called after forward with (module, args, output), a
non-None result replaces the output, in registration order, removed by the handle), checked against torch."""

import numpy as np
import pytest

import xpnet
from xpnet import nn
from xpnet.models import build_model

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference (pip install 'xpnet[torch]')")


def batch(*shape: int) -> xpnet.Tensor:
    return xpnet.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def test_hook_gets_module_args_and_output_after_forward():
    layer, seen = nn.Linear(3, 2), []
    layer.register_forward_hook(lambda m, args, out: seen.append((m, args, out)))
    x = batch(4, 3)
    out = layer(x)
    assert len(seen) == 1
    module, args, hooked_out = seen[0]
    assert module is layer and isinstance(args, tuple) and len(args) == 1 and args[0] is x
    assert hooked_out is out
    np.testing.assert_array_equal(out.data, (x.data @ layer.weight.data.T + layer.bias.data))


def test_loss_hook_gets_every_positional_argument():
    loss, seen = nn.CrossEntropyLoss(), []
    loss.register_forward_hook(lambda m, args, out: seen.append(args))
    logits, target = batch(4, 3), np.array([0, 2, 1, 0])
    loss(logits, target)
    assert seen[0][0] is logits and seen[0][1] is target


def test_non_none_result_replaces_the_output_for_later_hooks_and_the_caller():
    layer, seen = nn.ReLU(), []
    layer.register_forward_hook(lambda m, args, out: out * 2.0)
    layer.register_forward_hook(lambda m, args, out: seen.append(out.data.copy()))  # returns None: output kept
    layer.register_forward_hook(lambda m, args, out: out + 1.0)
    x = batch(2, 3)
    out = layer(x)
    relu = np.maximum(x.data, 0)
    np.testing.assert_array_equal(seen[0], relu * 2)
    np.testing.assert_array_equal(out.data, relu * 2 + 1)


def test_replaced_output_carries_the_gradient():
    layer = nn.Linear(3, 2)
    layer.register_forward_hook(lambda m, args, out: out * 3.0)
    layer(batch(4, 3)).sum().backward()
    np.testing.assert_allclose(layer.bias.grad, np.full(2, 12.0))  # d(sum(3 * (xW^T + b)))/db = 3 * batch


def test_hook_on_a_child_changes_what_the_next_layer_sees():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model[0].register_forward_hook(lambda m, args, out: out * 0.0 - 1.0)
    np.testing.assert_array_equal(model(batch(2, 3)).data, np.zeros((2, 3), np.float32))


def test_remove_stops_the_hook_and_is_safe_twice():
    layer, calls = nn.ReLU(), []
    first = layer.register_forward_hook(lambda m, args, out: calls.append("first"))
    layer.register_forward_hook(lambda m, args, out: calls.append("second"))
    layer(batch(1, 2))
    first.remove()
    first.remove()
    layer(batch(1, 2))
    assert calls == ["first", "second", "second"]


def test_handle_as_context_manager_removes_on_exit():
    layer, calls = nn.ReLU(), []
    with layer.register_forward_hook(lambda m, args, out: calls.append(1)):
        layer(batch(1, 2))
    layer(batch(1, 2))
    assert calls == [1]


def test_handles_have_distinct_ids():
    layer = nn.ReLU()
    handles = [layer.register_forward_hook(lambda m, a, o: None) for _ in range(3)]
    assert len({h.id for h in handles}) == 3


def test_hook_may_remove_itself_while_running():
    layer, calls = nn.ReLU(), []

    def once(module, args, out):
        calls.append("once")
        handle.remove()

    handle = layer.register_forward_hook(once)
    layer.register_forward_hook(lambda m, a, o: calls.append("after"))
    layer(batch(1, 2))
    layer(batch(1, 2))
    assert calls == ["once", "after", "after"]


def test_non_callable_hook_is_refused():
    with pytest.raises(TypeError, match="hook must be callable"):
        nn.ReLU().register_forward_hook("not a function")


def test_hooks_do_not_enter_state_dict_or_parameters():
    layer = nn.Linear(3, 2)
    before = list(layer.state_dict())
    layer.register_forward_hook(lambda m, a, o: None)
    assert list(layer.state_dict()) == before == ["weight", "bias"]
    assert len(layer.parameters()) == 2


def record_leaves(model, shapes, named_modules):
    """Register a hook on every leaf of ``model`` that appends (name, input shape, output shape)."""
    handles = []
    for name, module in named_modules:
        if not list(module.children()):
            def hook(m, args, out, name=name):
                shapes.append((name, tuple(args[0].shape), tuple(out.shape)))
            handles.append(module.register_forward_hook(hook))
    return handles


@requires_torch
def test_leaf_hooks_fire_as_in_torch_on_the_resnet():
    """Same leaves, same call order (the shortcut after conv2/bn2), same shapes, and the same replaced logits."""
    from xpnet.interop.torch import to_torch

    model = build_model("resnet").eval()
    twin = to_torch(model).eval()
    ours, theirs = [], []
    record_leaves(model, ours, model.named_modules())
    record_leaves(twin, theirs, twin.named_modules())
    model.fc.register_forward_hook(lambda m, args, out: out * 0.5)
    twin.fc.register_forward_hook(lambda m, args, out: out * 0.5)
    x = batch(2, 1, 28, 28)
    out = model(x)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x.data))
    assert ours == theirs and len(ours) == len([m for m in twin.modules() if not list(m.children())])
    np.testing.assert_allclose(out.data, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_pre_hook_runs_before_forward_and_may_replace_the_arguments():
    layer, order = nn.Linear(3, 2), []
    x, doubled = batch(4, 3), None
    layer.register_forward_hook(lambda m, args, out: order.append("hook"))
    handle = layer.register_forward_pre_hook(lambda m, args: order.append("pre") or xpnet.tensor(args[0].data * 2))
    out = layer(x)
    doubled = layer.weight.data @ (2 * x.data).T
    assert order == ["pre", "hook"]
    np.testing.assert_allclose(out.data, doubled.T + layer.bias.data, rtol=1e-6)
    handle.remove()
    np.testing.assert_allclose(layer(x).data, (layer.weight.data @ x.data.T).T + layer.bias.data, rtol=1e-6)
    with pytest.raises(TypeError, match="register_forward_pre_hook: hook must be callable"):
        layer.register_forward_pre_hook("not a function")


def test_observe_calls_reports_each_function_in_this_thread_only():
    import threading

    from xpnet.autograd import observe_calls

    layer, seen, other = nn.Linear(3, 2), [], []
    with observe_calls(lambda fn, inputs, options, out, ctx: seen.append((fn.__name__, out.shape))):
        xpnet.functional.relu(layer(batch(4, 3)))
        worker = threading.Thread(target=lambda: other.append(layer(batch(1, 3))))
        worker.start()
        worker.join()
        with observe_calls(lambda *call: None):  # an inner block takes over, then hands back
            layer(batch(1, 3))
        layer(batch(2, 3))
    layer(batch(5, 3))
    linear = seen[0][0]
    assert seen == [(linear, (4, 2)), ("ReLU", (4, 2)), (linear, (2, 2))], seen
    assert other[0].shape == (1, 2)  # the other thread ran, unobserved
