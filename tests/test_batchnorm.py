"""Batch normalisation: F.batch_norm and nn.BatchNorm1d/2d against central differences, a naive per-channel
reference, every backend's kernel pair and PyTorch (forward, gradients, running statistics, state_dict)."""

import zlib

import numpy as np
import pytest
from test_no_python_loops import step_lines

import xpnet
from xpnet import functional as F
from xpnet import nn
from xpnet.gradcheck import max_relative_error

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference (pip install 'xpnet[torch]')")

TOL = 1e-6
BACKENDS = [name for name in xpnet.backends_available() if name != "cupy"]
SHAPES = [(2, 3), (5, 4), (2, 3, 5), (3, 2, 7), (2, 3, 4, 5), (3, 2, 3, 5)]  # batch 2 and odd sizes, 2-D to 4-D


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: small tensors


def rng_for(*key):
    """A generator seeded by the test's parameters (crc32: the same in every process, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def running_stats(c, rng):
    return rng.standard_normal(c), rng.random(c) + 0.5


def naive_batch_norm(x, weight, bias, eps):
    """Loops over channels: each channel's values, their mean and biased variance, normalised (float64)."""
    out = np.empty_like(x, dtype=np.float64)
    means, variances = [], []
    for ch in range(x.shape[1]):
        values = x[:, ch].astype(np.float64)
        mean = values.sum() / values.size
        var = ((values - mean) ** 2).sum() / values.size
        out[:, ch] = (values - mean) / np.sqrt(var + eps) * weight[ch] + bias[ch]
        means.append(mean)
        variances.append(var)
    return out, np.array(means), np.array(variances)


def naive_batch_norm_grads(x, weight, g, eps):
    """gx, gw, gb of naive_batch_norm by the textbook formulas, channel by channel (float64)."""
    gx = np.empty_like(x, dtype=np.float64)
    gw, gb = np.empty(x.shape[1]), np.empty(x.shape[1])
    for ch in range(x.shape[1]):
        values, grads = x[:, ch].astype(np.float64), g[:, ch].astype(np.float64)
        std = np.sqrt(values.var() + eps)
        xhat = (values - values.mean()) / std
        gb[ch], gw[ch] = grads.sum(), (grads * xhat).sum()
        gx[:, ch] = weight[ch] / std * (grads - grads.mean() - xhat * (grads * xhat).mean())
    return gx, gw, gb


# --- gradient checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradients(backend, shape, training, affine):
    xpnet.use(backend)
    rng = rng_for(shape, training, affine)
    c = shape[1]
    rm, rv = running_stats(c, rng)
    inputs = [rng.standard_normal(shape) * 2 + 1]
    if affine:
        inputs += [rng.standard_normal(c), rng.standard_normal(c)]

    # Two values per channel normalise to about +-1 whatever they are: the input gradient is O(eps / var), too
    # small for central differences to resolve unless eps is large.
    eps = 0.5 if training and np.prod(shape) // c == 2 else 1e-5

    def fn(x, w=None, b=None):
        return F.batch_norm(x, xpnet.tensor(rm.copy()), xpnet.tensor(rv.copy()), w, b, training=training, eps=eps)

    assert max_relative_error(fn, inputs) < TOL


def test_weight_only_and_bias_only_gradients():
    rng = rng_for("partial")
    x, v = rng.standard_normal((3, 4, 5)), rng.standard_normal(4)
    assert max_relative_error(lambda x, w: F.batch_norm(x, None, None, w, None, training=True), [x, v]) < TOL
    assert max_relative_error(lambda x, b: F.batch_norm(x, None, None, None, b, training=True), [x, v]) < TOL


# --- kernels: every backend against a naive loop -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 3), (3, 5, 1), (4, 3, 9), (3, 2, 5, 7), (2, 3, 40, 30), (1, 2, 3000)],
                         ids=str)
def test_kernel_pair_matches_a_naive_loop(backend, dtype, shape):
    """Includes rows longer than the Numba kernels' summation block (1200 and 3000 values) and a mean far from 0."""
    be = xpnet.get_backend(backend)
    rng = rng_for(backend, dtype, shape)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    out, mean, var, residual = be.batch_norm_forward(be.asarray(x), be.asarray(w), be.asarray(b), 1e-5)
    gx, gw, gb = be.batch_norm_backward(residual, be.asarray(g), (True, True, True))
    ref_out, ref_mean, ref_var = naive_batch_norm(x, w, b, 1e-5)
    ref_gx, ref_gw, ref_gb = naive_batch_norm_grads(x, w, g, 1e-5)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    for what, got, ref in [("out", out, ref_out), ("mean", mean, ref_mean), ("var", var, ref_var), ("gx", gx, ref_gx),
                           ("gw", gw, ref_gw), ("gb", gb, ref_gb)]:
        got = be.to_numpy(got)
        assert got.dtype == dtype and got.shape == ref.shape, what
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_pair_on_a_strided_view_and_without_weight_or_bias(backend):
    be = xpnet.get_backend(backend)
    rng = rng_for("strided", backend)
    x = rng.standard_normal((5, 4, 6, 3)).transpose(0, 3, 2, 1)  # (5, 3, 6, 4), not contiguous
    g = rng.standard_normal((5, 3, 6, 4))[:, :, ::-1]
    out, _, _, residual = be.batch_norm_forward(x, None, None, 1e-3)
    gx, gw, gb = be.batch_norm_backward(residual, g, (True, False, False))
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(out, naive_batch_norm(x, ones, zeros, 1e-3)[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, naive_batch_norm_grads(x, ones, g, 1e-3)[0], rtol=1e-12, atol=1e-12)
    assert gw is None and gb is None


def test_numba_kernels_refuse_bad_arguments():
    pytest.importorskip("numba", reason="the numba backend needs numba")
    be = xpnet.get_backend("numba")
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"batch-norm weight has shape \(4,\), expected \(3,\)"):
        be.batch_norm_forward(x, np.ones(4), None, 1e-5)
    with pytest.raises(ValueError, match="float32 or float64.*int64"):
        be.batch_norm_forward(np.zeros((2, 3, 4), np.int64), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"non-empty.*\(0, 3\)"):
        be.batch_norm_forward(np.zeros((0, 3)), None, None, 1e-5)
    _, _, _, residual = be.batch_norm_forward(x, None, None, 1e-5)
    with pytest.raises(ValueError, match=r"batch-norm gradient has shape \(2, 3, 5\), expected \(2, 3, 4\)"):
        be.batch_norm_backward(residual, np.zeros((2, 3, 5)), (True, False, False))


# --- F.batch_norm against torch ------------------------------------------------------------------------------

def torch_batch_norm(x, rm, rv, w, b, training, momentum, g):
    """torch's output, gradients (x, w, b) and running statistics afterwards."""
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    out = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, momentum, 1e-5)
    out.backward(torch.tensor(g))
    grads = [None if t is None else t.grad.numpy() for t in (tx, tw, tb)]
    return out.detach().numpy(), grads, trm.numpy(), trv.numpy()


def assert_close(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * np.abs(theirs).max(), err_msg=what)


@requires_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_functional_matches_torch(backend, shape, training, affine):
    xpnet.use(backend)
    rng = rng_for("torch", shape, training, affine)
    c = shape[1]
    x, g = rng.standard_normal(shape) * 2 - 1, rng.standard_normal(shape)
    w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
    rm, rv = running_stats(c, rng)
    out_t, grads_t, rm_t, rv_t = torch_batch_norm(x, rm, rv, w, b, training, 0.3, g)
    tensors = [None if a is None else xpnet.tensor(a, requires_grad=True) for a in (x, w, b)]
    running = xpnet.tensor(rm.copy()), xpnet.tensor(rv.copy())
    out = F.batch_norm(tensors[0], *running, tensors[1], tensors[2], training=training, momentum=0.3)
    out.backward(g)
    assert_close(out.numpy(), out_t, "output")
    for what, t, ref in zip(["input", "weight", "bias"], tensors, grads_t):
        if t is not None:
            assert_close(t.grad, ref, f"{what} gradient")
    assert_close(running[0].numpy(), rm_t, "running_mean")
    assert_close(running[1].numpy(), rv_t, "running_var")
    if not training:
        np.testing.assert_array_equal(running[0].numpy(), rm)


@requires_torch
def test_training_without_running_statistics_and_under_no_grad():
    rng = rng_for("no stats")
    x = rng.standard_normal((4, 3, 5))
    out_t, _, _, _ = torch_batch_norm(x, np.zeros(3), np.ones(3), None, None, True, 0.1, np.ones_like(x))
    assert_close(F.batch_norm(xpnet.tensor(x), None, None, training=True).numpy(), out_t, "output")
    rm, rv = xpnet.tensor(np.zeros(3)), xpnet.tensor(np.ones(3))
    with xpnet.no_grad():
        F.batch_norm(xpnet.tensor(x), rm, rv, training=True)
    assert_close(rm.numpy(), 0.1 * x.mean(axis=(0, 2)), "running_mean updated under no_grad")
    assert_close(rv.numpy(), 0.9 + 0.1 * x.var(axis=(0, 2), ddof=1), "running_var (unbiased batch variance)")


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1)], ids=str)
def test_training_refuses_one_value_per_channel(shape):
    x = xpnet.tensor(np.ones(shape))
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size "
                                         + str(shape).replace("(", r"\(").replace(")", r"\)")):
        F.batch_norm(x, None, None, training=True)
    assert F.batch_norm(x, xpnet.tensor(np.zeros(shape[1])), xpnet.tensor(np.ones(shape[1]))).shape == shape


@pytest.mark.parametrize("kwargs, error, message", [
    ({"weight": np.ones(4)}, ValueError, r"weight has shape \(4,\), expected \(3,\).*\(2, 3, 5\)"),
    ({"bias": np.ones((3, 1))}, ValueError, r"bias has shape \(3, 1\), expected \(3,\)"),
    ({"running_mean": np.zeros(2)}, ValueError, r"running_mean has shape \(2,\), expected \(3,\)"),
    ({"weight": np.ones(3, np.float32)}, TypeError, "weight has dtype float32, expected float64"),
    ({"running_var": np.ones(3, np.float32)}, TypeError, "running_var has dtype float32, expected float64"),
])
def test_functional_argument_errors_name_the_argument(kwargs, error, message):
    args = {"running_mean": np.zeros(3), "running_var": np.ones(3), **kwargs}
    tensors = {k: xpnet.tensor(v) for k, v in args.items()}
    with pytest.raises(error, match=message):
        F.batch_norm(xpnet.tensor(np.ones((2, 3, 5))), **tensors)


def test_functional_refuses_missing_or_mismatched_running_statistics():
    x = xpnet.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="must be given in evaluation mode"):
        F.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="running_mean and running_var must either both be None or neither"):
        F.batch_norm(x, xpnet.tensor(np.zeros(3)), None, training=True)
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(3,\)"):
        F.batch_norm(xpnet.tensor(np.ones(3)), None, None, training=True)
    with pytest.raises(TypeError, match="running_mean must be an xpnet Tensor or None, got ndarray"):
        F.batch_norm(x, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match="momentum must be a number, got None"):
        F.batch_norm(x, xpnet.tensor(np.zeros(3)), xpnet.tensor(np.ones(3)), training=True, momentum=None)


# --- nn.BatchNorm1d / BatchNorm2d against torch ---------------------------------------------------------------

def twins(cls, c, **kwargs):
    xpnet.set_default_dtype(np.float64)
    ours = getattr(nn, cls)(c, **kwargs)
    theirs = getattr(torch.nn, cls)(c, **kwargs).double()
    rng = rng_for(cls, c)
    for name, p in ours.named_parameters():  # non-default affine parameters, the same in both
        value = rng.standard_normal(c)
        ours.load_state_dict({**ours.state_dict(), name: value})
        with torch.no_grad():
            getattr(theirs, name).copy_(torch.tensor(value))
    return ours, theirs


def assert_state_dicts_equal(ours, theirs):
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    for key, value in reference.items():
        assert type(mine[key]) is np.ndarray and mine[key].dtype == value.numpy().dtype, key
        assert mine[key].shape == tuple(value.shape), key
        assert_close(mine[key], value.numpy(), key)


@requires_torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls, shape", [("BatchNorm2d", (4, 3, 5, 6)), ("BatchNorm1d", (6, 3)),
                                        ("BatchNorm1d", (3, 3, 7))], ids=["2d", "1d (N, C)", "1d (N, C, L)"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "cumulative"])
def test_ten_training_steps_then_eval_match_torch(backend, cls, shape, momentum):
    xpnet.use(backend)
    ours, theirs = twins(cls, shape[1], momentum=momentum)
    rng = rng_for("steps", cls, shape, momentum)
    for step in range(10):
        x, g = rng.standard_normal(shape) * (1 + step) + step, rng.standard_normal(shape)
        tx = torch.tensor(x, requires_grad=True)
        out_t = theirs(tx)
        out_t.backward(torch.tensor(g))
        xt = xpnet.tensor(x, requires_grad=True)
        out = ours(xt)
        out.backward(g)
        assert_close(out.numpy(), out_t.detach().numpy(), f"output at step {step}")
        assert_close(xt.grad, tx.grad.numpy(), f"input gradient at step {step}")
        assert_close(ours.weight.grad, theirs.weight.grad.numpy(), f"weight gradient at step {step}")
        assert_close(ours.bias.grad, theirs.bias.grad.numpy(), f"bias gradient at step {step}")
        ours.zero_grad()
        theirs.zero_grad()
    assert ours.num_batches_tracked.item() == 10 and ours.num_batches_tracked.dtype == np.int64
    assert_state_dicts_equal(ours, theirs)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal(shape)
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    assert_close(ours(xpnet.tensor(x)).numpy(), expected, "eval output")
    assert_state_dicts_equal(ours, theirs)  # evaluation changes no statistics


def test_cumulative_average_is_the_mean_of_the_batch_statistics():
    xpnet.set_default_dtype(np.float64)
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [np.random.default_rng(i).standard_normal((5, 2)) * (i + 1) for i in range(4)]
    for x in batches:
        bn(xpnet.tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([x.mean(axis=0) for x in batches], axis=0),
                               rtol=1e-14)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([x.var(axis=0, ddof=1) for x in batches], axis=0),
                               rtol=1e-14)


@requires_torch
@pytest.mark.parametrize("kwargs", [{"affine": False}, {"track_running_stats": False},
                                    {"affine": False, "track_running_stats": False}, {"bias": False},
                                    {"eps": 1e-3, "momentum": 0.5}], ids=str)
def test_options_match_torch(kwargs):
    ours, theirs = twins("BatchNorm2d", 3, **kwargs)
    assert repr(ours) == repr(theirs)
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    rng = rng_for("options", str(kwargs))
    for mode in ("train", "train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        x = rng.standard_normal((3, 3, 4, 2))
        with torch.no_grad():
            expected = theirs(torch.tensor(x)).numpy()
        assert_close(ours(xpnet.tensor(x)).numpy(), expected, f"{mode} output")
        assert_state_dicts_equal(ours, theirs)


def test_defaults_initialisation_and_float32():
    bn = nn.BatchNorm2d(4)
    assert bn.training and bn.eps == 1e-5 and bn.momentum == 0.1 and bn.affine and bn.track_running_stats
    for name, value in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
        t = getattr(bn, name)
        assert t.dtype == np.float32 and t.shape == (4,) and np.all(t.numpy() == value), name
    assert not bn.running_mean.requires_grad and bn.weight.requires_grad
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64
    assert [p for p in bn.parameters()] == [bn.weight, bn.bias]
    x = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    assert bn(xpnet.tensor(x)).dtype == np.float32 and bn.running_mean.dtype == np.float32
    tracked = nn.BatchNorm1d(4, track_running_stats=False)
    assert tracked.running_mean is None and tracked.num_batches_tracked is None


def test_train_and_eval_switch_through_a_container():
    xpnet.set_default_dtype(np.float64)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = xpnet.tensor(np.random.default_rng(1).standard_normal((6, 3)))
    model(x)
    bn = model[1]
    stats = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    model.eval()
    assert not bn.training
    out = model(x).numpy()
    np.testing.assert_array_equal(bn.running_mean.numpy(), stats[0])
    assert bn.num_batches_tracked.item() == 1
    linear = model[0](x).numpy()
    expected = (linear - stats[0]) / np.sqrt(stats[1] + 1e-5) * bn.weight.numpy() + bn.bias.numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    model.train()
    assert bn.training
    model(xpnet.tensor(np.ones((1, 3)) * np.arange(2)[:, None]))  # two samples
    assert bn.num_batches_tracked.item() == 2


@pytest.mark.parametrize("cls, shape, expected", [
    ("BatchNorm2d", (2, 3, 4), r"BatchNorm2d\(3\) expects input \(N, 3, H, W\), got shape \(2, 3, 4\)"),
    ("BatchNorm2d", (2, 5, 4, 4), r"BatchNorm2d\(3\) expects input \(N, 3, H, W\), got shape \(2, 5, 4, 4\)"),
    ("BatchNorm1d", (2, 3, 4, 4), r"BatchNorm1d\(3\) expects input \(N, 3\) or \(N, 3, L\), got shape \(2, 3, 4, 4\)"),
    ("BatchNorm1d", (2, 4), r"BatchNorm1d\(3\) expects input \(N, 3\) or \(N, 3, L\), got shape \(2, 4\)"),
])
def test_module_input_errors_name_the_module_and_the_shapes(cls, shape, expected):
    with pytest.raises(ValueError, match=expected):
        getattr(nn, cls)(3)(xpnet.tensor(np.ones(shape, np.float32)))


def test_a_refused_batch_changes_no_statistics():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(xpnet.tensor(np.ones((1, 3), np.float32)))
    assert bn.num_batches_tracked.item() == 0 and np.all(bn.running_mean.numpy() == 0)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm2d(0)


@pytest.mark.parametrize("shape, scaled", [((2, 2, 8, 8), None), ((16, 2, 8, 8), "batch"), ((2, 5, 8, 8), "channels"),
                                           ((2, 2, 20, 16), "image")])
def test_layer_does_not_loop_over_batch_channels_or_pixels(shape, scaled):
    assert step_lines(nn.BatchNorm2d(shape[1]), shape) == step_lines(nn.BatchNorm2d(2), (2, 2, 8, 8)), scaled
