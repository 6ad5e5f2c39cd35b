"""xpnet against PyTorch: the three report models' logits, gradients and 100-step training runs, and the layers
where the two could plausibly disagree (max-pool ties, conv padding and stride, dropout masks). The ResNet's
float64 parity is in test_torch_parity_resnet.py; its float32 pass is here with the others'."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference these parity tests compare against")

import xpnet  # noqa: E402
from xpnet import check, random  # noqa: E402
from xpnet import functional as F  # noqa: E402
from xpnet.interop.torch import MaskedDropout  # noqa: E402

MODELS = ["report1", "report2", "lenet5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small tensors


def rel_err(ours, theirs) -> float:
    """Largest elementwise difference relative to the largest magnitude of the reference."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def one_pass(name, dtype, batch_size=8):
    """One forward/backward of model ``name`` in both frameworks on a random batch, same dropout masks."""
    model, twin = check.twins(name, dtype)
    x, y = check.batches(1, batch_size, dtype, seed=3)[0]
    state = random.get_state()
    ours = check.xpnet_pass(model, x, y)
    random.set_state(state)
    return ours, check.torch_pass(twin, x, y)


@pytest.mark.parametrize("name", MODELS)
def test_logits_and_gradients_float64(name):
    ours, theirs = one_pass(name, np.float64)
    assert ours.grads.keys() == theirs.grads.keys()
    assert abs(ours.loss - theirs.loss) <= 1e-10
    np.testing.assert_allclose(ours.logits, theirs.logits, rtol=0, atol=1e-10)
    for key, grad in ours.grads.items():
        np.testing.assert_allclose(grad, theirs.grads[key], rtol=0, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("name", MODELS + ["resnet"])
def test_logits_and_gradients_float32(name):
    ours, theirs = one_pass(name, np.float32)
    assert ours.logits.dtype == theirs.logits.dtype == np.float32
    assert rel_err(ours.logits, theirs.logits) <= 1e-5
    for key, grad in ours.grads.items():
        assert grad.dtype == np.float32
        assert rel_err(grad, theirs.grads[key]) <= 1e-5, key


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", MODELS)
def test_100_training_steps_float64(name, optimizer):
    diffs = check.compare(name, steps=100, dtype=np.float64, optimizer=optimizer, batch_size=4)
    assert len(diffs) == 100
    for step, d in enumerate(diffs, 1):
        loss_diff = d.loss * max(1.0, abs(d.torch_loss))  # undo error()'s scaling: an absolute difference
        assert loss_diff <= 1e-8, f"step {step}: |loss difference| {loss_diff:.3g}"
        assert max(d.logits, d.grads, d.params) <= 1e-8, f"step {step}: {d}"


def test_training_actually_moves_the_loss():
    """Guard against a vacuous comparison: the runs above must really train."""
    diffs = check.compare("lenet5", steps=30, dtype=np.float64, optimizer="adam", batch_size=4, lr=1e-2)
    assert diffs[-1].torch_loss < diffs[0].torch_loss - 0.1


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2), (2, 1)])
def test_max_pool_ties_route_like_torch(kernel, stride):
    """Integer inputs with many repeated maxima: the first maximum of each window wins in both frameworks."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, 3, 9, 9)).astype(np.float64)
    gout_shape = (2, 3, (9 - kernel) // stride + 1, (9 - kernel) // stride + 1)
    gout = rng.standard_normal(gout_shape)
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.max_pool2d(xt, kernel, stride)
    out.backward(gout)
    tx = torch.tensor(x, requires_grad=True)
    tout = torch.nn.functional.max_pool2d(tx, kernel, stride)
    tout.backward(torch.from_numpy(gout))
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=0, atol=1e-14)
    if kernel == stride:  # no overlap: each input pixel gets exactly one output's gradient or none
        np.testing.assert_array_equal(xt.grad, tx.grad.numpy())


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_padding_and_stride(padding, stride):
    rng = np.random.default_rng(padding * 10 + stride)
    x, w, b = rng.standard_normal((3, 2, 9, 11)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    xs = [xpnet.tensor(a, requires_grad=True) for a in (x, w, b)]
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    out = F.conv2d(*xs, stride=stride, padding=padding)
    tout = torch.nn.functional.conv2d(*ts, stride=stride, padding=padding)
    assert out.shape == tuple(tout.shape)
    gout = rng.standard_normal(out.shape)
    out.backward(gout)
    tout.backward(torch.from_numpy(gout))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=0, atol=1e-10)
    for ours, theirs, what in zip(xs, ts, ("input", "weight", "bias")):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=0, atol=1e-10, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_with_injected_mask(dtype):
    rng = np.random.default_rng(1)
    x, gout = rng.standard_normal((4, 6, 5)).astype(dtype), rng.standard_normal((4, 6, 5)).astype(dtype)
    keep = rng.random(x.shape) >= 0.3
    xt = xpnet.tensor(x, requires_grad=True)
    out = F.dropout(xt, 0.3, mask=keep)
    out.backward(gout)
    tx = torch.tensor(x, requires_grad=True)
    tout = MaskedDropout(0.3, lambda shape: keep)(tx)
    tout.backward(torch.from_numpy(gout))
    np.testing.assert_array_equal(out.numpy(), tout.detach().numpy())
    np.testing.assert_array_equal(xt.grad, tx.grad.numpy())
    assert np.all(out.numpy()[~keep] == 0) and np.all(out.numpy()[keep] != 0)


def test_replayed_dropout_draws_xpnet_masks():
    """The twin's dropout, after rewinding xpnet's generator, zeroes exactly the units xpnet's dropout zeroed."""
    _, twin = check.twins("report1", np.float64)
    x = np.abs(np.random.default_rng(2).standard_normal((4, 1, 28, 28))) + 1.0
    state = random.get_state()
    ours = F.dropout(xpnet.tensor(x), 0.3).numpy()
    random.set_state(state)
    theirs = twin[3](torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert 0.2 < np.mean(ours == 0) < 0.4
    assert isinstance(twin[3], MaskedDropout) and twin[3].p == 0.3


def test_check_cli_passes_and_fails_on_tolerance(capsys):
    argv = ["--against", "torch", "--models", "lenet5", "--steps", "2", "--optimizer", "sgd", "--batch-size", "2"]
    assert check.main(argv) == 0
    assert check.main(argv + ["--tol", "0"]) == 1
    out = capsys.readouterr().out
    assert "lenet5   sgd" in out and "ok" in out and "FAIL" in out


def test_check_cli_float32_reports_drift(capsys):
    argv = ["--against", "torch", "--models", "report1", "--steps", "2", "--optimizer", "adam", "--dtype",
            "float32", "--batch-size", "2"]
    assert check.main(argv) == 0
    assert "drift" in capsys.readouterr().out


def test_check_detects_an_optimizer_mismatch(monkeypatch):
    """SGD without the momentum buffer must fail the comparison at once."""
    monkeypatch.setattr(xpnet.optim.SGD, "_update",
                        lambda self, p, grad, state, group: p.data.__isub__(group["lr"] * grad))
    diffs = check.compare("lenet5", steps=3, dtype=np.float64, optimizer="sgd", batch_size=2)
    assert not check.within_tolerance(diffs[-1], check.TOLERANCES["float64"])
