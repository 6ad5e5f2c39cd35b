"""xpnet's ResNet against its PyTorch twin in float64: the exact round trip, logits and every gradient, parameters
and BatchNorm running statistics along 10 training steps (SGD with momentum, Adam), the eval-mode output after
them, and the ``python -m xpnet.check`` command on the model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference these parity tests compare against")

import xpnet  # noqa: E402
from xpnet import check  # noqa: E402
from xpnet.interop import torch as xt  # noqa: E402

TOL = 1e-10
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small tensors


def torch_buffers(module) -> dict:
    return {k: v.numpy().copy() for k, v in module.named_buffers()}


def xpnet_buffers(model) -> dict:
    state = model.state_dict()
    return {k: state[k] for k, _ in model.named_buffers()}


def assert_close(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), what
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=TOL * max(1.0, np.abs(value).max()),
                                   err_msg=f"{what} {key}")


def test_round_trip_is_exact():
    xpnet.set_default_dtype(np.float64)
    model = xpnet.build_model("resnet", widths=(4, 8), blocks=(2, 1))
    x = xpnet.tensor(np.random.default_rng(0).standard_normal((BATCH, 1, 12, 12)))
    model(x)  # one training-mode step, so that the running statistics are not their initial values
    back = xt.from_torch(xt.to_torch(model.eval()))
    assert type(back) is type(model) and type(back.layer1[0]) is type(model.layer1[0])
    assert back.layer1[1].downsample is None and back.layer2[0].downsample is not None
    ours, theirs = model.state_dict(), back.state_dict()
    assert list(theirs) == list(ours)
    for key, value in ours.items():
        assert theirs[key].dtype == value.dtype, key
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)
    assert not back.training
    np.testing.assert_array_equal(back(x).numpy(), model(x).numpy())


def test_torch_built_twin_computes_the_same_in_xpnet():
    """The other way: a ResNet made and initialised by torch, in training mode, imported into xpnet."""
    torch.manual_seed(0)
    net = xt.TorchResNet((3, 10, 10), 5, widths=(4, 6), blocks=(1, 2)).double()
    model = xt.from_torch(net)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((BATCH, 3, 10, 10)), rng.integers(0, 5, BATCH)
    ours, theirs = check.xpnet_pass(model, x, y), check.torch_pass(net, x, y)
    np.testing.assert_allclose(ours.logits, theirs.logits, rtol=0, atol=TOL)
    assert_close(ours.grads, theirs.grads, "gradient")
    assert_close(xpnet_buffers(model), torch_buffers(net), "buffer")


def test_logits_and_every_gradient():
    model, twin = check.twins("resnet", np.float64)
    x, y = check.batches(1, BATCH, np.float64, seed=3)[0]
    ours, theirs = check.xpnet_pass(model, x, y), check.torch_pass(twin, x, y)
    assert abs(ours.loss - theirs.loss) <= TOL
    np.testing.assert_allclose(ours.logits, theirs.logits, rtol=0, atol=TOL)
    assert ours.grads.keys() == theirs.grads.keys() == dict(model.named_parameters()).keys()
    assert_close(ours.grads, theirs.grads, "gradient")
    assert all(np.abs(g).max() > 0 for g in theirs.grads.values())  # every parameter really takes part


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ten_training_steps_then_eval(optimizer):
    model, twin = check.twins("resnet", np.float64)
    start = torch_buffers(twin)
    optimizers = [check.make_optimizer(optimizer, m) for m in (model, twin)]
    losses = []
    for step, (x, y) in enumerate(check.batches(10, BATCH, np.float64, seed=4), 1):
        for (run_pass, m), opt in zip([(check.xpnet_pass, model), (check.torch_pass, twin)], optimizers):
            opt.zero_grad()
            snap = run_pass(m, x, y)
            opt.step()
        losses.append(snap.loss)
        params = {k: p.detach().numpy() for k, p in twin.named_parameters()}
        assert_close({k: p.numpy() for k, p in model.named_parameters()}, params, f"step {step} parameter")
        assert_close(xpnet_buffers(model), torch_buffers(twin), f"step {step} buffer")
    moved = torch_buffers(twin)
    assert moved["layer3.0.bn2.num_batches_tracked"] == 10
    assert all(np.abs(moved[k] - start[k]).max() > 1e-4 for k in moved if "running" in k)
    assert losses[-1] != losses[0]
    x = np.random.default_rng(5).standard_normal((BATCH, 1, 28, 28))
    ours = model.eval()(xpnet.tensor(x)).numpy()
    with torch.no_grad():
        theirs = twin.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)
    assert_close(xpnet_buffers(model), torch_buffers(twin), "buffer after eval")  # eval moves no statistic


def test_check_compares_running_statistics():
    """The check's "params" column covers the buffers: a BatchNorm whose running mean does not move must fail."""
    model, twin = check.twins("resnet", np.float64)
    grads = {"fc.bias": np.zeros(10)}
    ours = check.Snapshot(0.0, np.zeros(1), grads, model.state_dict())
    theirs = check.Snapshot(0.0, np.zeros(1), grads, {k: v.numpy().copy() for k, v in twin.state_dict().items()})
    assert check._errors(ours, theirs) == (0.0, 0.0, 0.0, 0.0)
    assert "bn1.running_mean" in ours.params and "bn1.num_batches_tracked" in ours.params
    theirs.params["bn1.running_mean"] += 1e-6
    assert check._errors(ours, theirs)[3] == pytest.approx(1e-6)
    del theirs.params["bn1.running_var"]
    with pytest.raises(ValueError, match="bn1.running_var"):
        check._errors(ours, theirs)


def test_check_cli_passes_on_resnet_and_fails_at_zero_tolerance(capsys):
    argv = ["--against", "torch", "--models", "resnet", "--steps", "2", "--batch-size", "2"]
    assert check.main(argv) == 0
    assert check.main(argv + ["--tol", "0"]) == 1
    out = capsys.readouterr().out
    assert "resnet   sgd" in out and "resnet   adam" in out and " ok" in out and "FAIL" in out


def test_check_default_models_include_resnet():
    assert "resnet" in check._parse(["--against", "torch"]).models

