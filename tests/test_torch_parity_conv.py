"""xpnet's convolution against PyTorch's: ``F.conv2d`` forward and every gradient to 1e-10 in float64 on each CPU
backend over op_cases' convolution cases (stride, padding, dilation, groups, depthwise, "same"), the arguments
both refuse, and ``nn.Conv2d``'s attributes, initialisation, state_dict and round trip through
``xpnet.interop.torch``."""

import math
import zlib
from importlib.util import find_spec

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference these parity tests compare against")

import xpnet  # noqa: E402
from op_cases import CONV_CASES  # noqa: E402
from xpnet import functional as F  # noqa: E402
from xpnet import nn  # noqa: E402
from xpnet.interop import torch as xt  # noqa: E402

CPU_BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    find_spec("numba") is None, reason="the numba backend needs numba: pip install 'xpnet[numba]'"))]
# PyTorch warns that an even "same" span makes it pad a copy of the input; that is the case being tested.
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name, options, shapes", CONV_CASES, ids=[case[0] for case in CONV_CASES])
def test_conv2d_matches_torch_float64(backend, name, options, shapes):
    xpnet.use(backend)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = [rng.standard_normal(s) for s in shapes]
    ours = [xpnet.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = F.conv2d(*ours, **options)
    tout = torch.nn.functional.conv2d(*theirs, **options)
    assert out.shape == tuple(tout.shape)
    gout = rng.standard_normal(out.shape)
    out.backward(gout)
    tout.backward(torch.from_numpy(gout))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=0, atol=1e-10, err_msg="output")
    for what, a, t in zip(("input", "weight", "bias"), ours, theirs):
        assert a.grad.shape == tuple(t.grad.shape), what
        np.testing.assert_allclose(a.grad, t.grad.numpy(), rtol=0, atol=1e-10, err_msg=f"{what} gradient")


# (input shape, weight shape, bias shape, options, xpnet's message, whether PyTorch refuses it too)
REFUSED = [
    ((2, 3, 5, 5), (4, 3, 3), None, {}, r"weight must be a non-empty 4-D array", True),
    ((3, 5, 5), (4, 3, 3, 3), None, {}, r"input must be 4-D \(N, C, H, W\), got shape \(3, 5, 5\)", False),
    ((2, 4, 5, 5), (4, 3, 3, 3), None, {}, r"input has 4 channels, but weight.shape\[1\] \* groups = 3 \* 1 = 3",
     True),
    ((2, 4, 5, 5), (3, 2, 3, 3), None, {"groups": 2},
     r"weight.shape\[0\] \(out_channels 3\) must be divisible by groups \(2\)", True),
    ((2, 4, 5, 5), (4, 4, 3, 3), None, {"groups": 0}, r"groups must be a positive int, got 0", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), (3,), {}, r"bias must have shape \(4,\), got \(3,\)", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"stride": 0}, r"stride must be an int >= 1 or a pair of them, got 0", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"dilation": (1, 0)}, r"dilation must be an int >= 1", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"padding": -1}, r"padding must be an int >= 0", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"padding": "same", "stride": 2},
     r"padding='same' is not supported for strided convolutions", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"padding": "full"}, r"invalid padding string 'full'", True),
    ((2, 3, 5, 5), (4, 3, 3, 3), None, {"dilation": 3},
     r"kernel_size \(3, 3\) with dilation \(3, 3\) spans 7 along the height, more than the padded input's 5", True),
    ((2, 3, 5, 4), (4, 3, 3, 6), None, {"padding": (1, 0)},
     r"kernel_size \(3, 6\) with dilation \(1, 1\) spans 6 along the width, more than the padded input's 4", True),
]


@pytest.mark.parametrize("x_shape, w_shape, b_shape, options, message, torch_refuses", REFUSED)
def test_bad_arguments_are_refused_naming_the_argument(x_shape, w_shape, b_shape, options, message, torch_refuses):
    arrays = [np.zeros(s) for s in (x_shape, w_shape, b_shape) if s is not None]
    with pytest.raises(ValueError, match=f"^conv2d: {message}"):
        F.conv2d(*(xpnet.tensor(a) for a in arrays), **options)
    if torch_refuses:
        with pytest.raises((RuntimeError, ValueError)):
            torch.nn.functional.conv2d(*(torch.from_numpy(a) for a in arrays), **options)


def test_fitting_kernels_are_not_refused():
    """The kernel-fits check is not off by one: a span equal to the padded input gives a 1x1 output."""
    out = F.conv2d(xpnet.tensor(np.ones((1, 1, 5, 8))), xpnet.tensor(np.ones((1, 1, 3, 6))), padding=(1, 1))
    assert out.shape == (1, 1, 5, 5)
    out = F.conv2d(xpnet.tensor(np.ones((1, 1, 4, 4))), xpnet.tensor(np.ones((1, 1, 2, 2))), padding="same",
                   dilation=3)
    assert out.shape == (1, 1, 4, 4)


# --- nn.Conv2d -------------------------------------------------------------------------------------------------

LAYERS = [
    ((3, 8, 3), {}),
    ((4, 8, (3, 2)), {"stride": (2, 1), "padding": (1, 0), "bias": False}),
    ((4, 6, 3), {"padding": "same", "dilation": 2, "groups": 2}),
    ((6, 12, 3), {"stride": 2, "padding": 1, "groups": 6}),
    ((2, 2, (2, 4)), {"padding": "valid", "dilation": (1, 2)}),
]


@pytest.mark.parametrize("args, kwargs", LAYERS)
def test_layer_attributes_weights_and_repr_match_torch(args, kwargs):
    ours, theirs = nn.Conv2d(*args, **kwargs), torch.nn.Conv2d(*args, **kwargs)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.weight.shape == tuple(theirs.weight.shape)
    assert (ours.bias is None) == (theirs.bias is None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.extra_repr() == theirs.extra_repr()


@pytest.mark.parametrize("args, kwargs", LAYERS)
def test_layer_initialisation_is_torchs_drawn_weight_then_bias(args, kwargs):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's fan_in (in / groups * kH * kW), weight drawn first."""
    xpnet.manual_seed(3)
    layer = nn.Conv2d(*args, **kwargs)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.nn.Conv2d(*args, **kwargs).weight)
    bound = 1 / math.sqrt(fan_in)
    xpnet.manual_seed(3)
    generator = xpnet.random.generator()
    weight = generator.uniform(-bound, bound, size=layer.weight.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.weight.numpy(), weight)
    if layer.bias is not None:
        bias = generator.uniform(-bound, bound, size=layer.bias.shape).astype(np.float32)
        np.testing.assert_array_equal(layer.bias.numpy(), bias)


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((4, 4, 3), {"padding_mode": "reflect"}, ValueError, r"padding_mode 'reflect' is not supported"),
    ((4, 4, 3), {"padding_mode": "circular"}, ValueError, r"xpnet pads with zeros only"),
    ((3, 4, 3), {"groups": 2}, ValueError, r"in_channels \(3\) must be divisible by groups \(2\)"),
    ((4, 3, 3), {"groups": 2}, ValueError, r"out_channels \(3\) must be divisible by groups \(2\)"),
    ((4, 4, 3), {"stride": 2, "padding": "same"}, ValueError, r"padding='same' is not supported for strided"),
    ((4, 4, 3), {"padding": "half"}, ValueError, r"invalid padding string 'half'"),
    ((4, 4, 0), {}, ValueError, r"kernel_size must be an int >= 1"),
])
def test_layer_refuses_what_it_cannot_do(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        nn.Conv2d(*args, **kwargs)


def test_old_name_still_works():
    assert nn.Conv2D is nn.Conv2d
    layer = nn.Conv2D(1, 2, 3, padding=1)
    assert layer.kernel_size == (3, 3) and layer.padding == (1, 1)


@pytest.mark.parametrize("args, kwargs", LAYERS)
def test_layer_round_trips_through_torch(args, kwargs):
    """to_torch / from_torch carry every setting, dilation and groups included, and the weights."""
    xpnet.set_default_dtype(np.float64)
    model = nn.Sequential(nn.Conv2d(*args, **kwargs))
    twin = xt.to_torch(model)
    for name in ("kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(twin[0], name) == getattr(model[0], name), name
    back = xt.from_torch(twin)
    x = np.random.default_rng(4).standard_normal((2, args[0], 9, 10))
    out = model(xpnet.tensor(x)).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), out, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back(xpnet.tensor(x)).numpy(), out)
    for name in ("kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(back[0], name) == getattr(model[0], name), name
