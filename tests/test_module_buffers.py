"""Module buffers: register_buffer, named_buffers, attribute access, state_dict order and round trips, to()."""

import copy

import numpy as np
import pytest

import xpnet
from xpnet import nn, optim
from xpnet.checkpoint import load_checkpoint, save_checkpoint

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is the reference (pip install 'xpnet[torch]')")


class Counter(nn.Module):
    """A parameter, a float buffer, an int buffer, a non-persistent buffer and an empty slot."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(2, np.float32))
        self.register_buffer("total", np.zeros(2, np.float32))
        self.register_buffer("steps", np.array(0, dtype=np.int64))
        self.register_buffer("scratch", np.zeros(3, np.float32), persistent=False)
        self.register_buffer("later", None)


def nested():
    """Buffers at several depths, after parameters, as in a real model."""
    return nn.Sequential(nn.Linear(2, 3), nn.Sequential(Counter(), nn.BatchNorm1d(3)), Counter())


def test_register_buffer_stores_tensors_without_grad_and_keeps_dtypes():
    m = Counter()
    assert isinstance(m.total, xpnet.Tensor) and not m.total.requires_grad
    assert m.total.dtype == np.float32 and m.steps.dtype == np.int64 and m.steps.shape == ()
    assert m.later is None
    t = xpnet.tensor(np.arange(3.0))
    m.register_buffer("given", t)
    assert m.given is t
    m.register_buffer("from_grad", xpnet.tensor(np.ones(2), requires_grad=True))
    assert not m.from_grad.requires_grad
    assert [p for p in m.parameters()] == [m.scale]
    assert "total" not in vars(m)  # one home, _buffers, so that assignment cannot bypass it


def test_named_buffers_follow_named_modules_and_skip_empty_slots():
    model = nested()
    assert [name for name, _ in model.named_buffers()] == [
        "1.0.total", "1.0.steps", "1.0.scratch", "1.1.running_mean", "1.1.running_var", "1.1.num_batches_tracked",
        "2.total", "2.steps", "2.scratch"]
    assert model.buffers() == [b for _, b in model.named_buffers()]


def test_state_dict_order_is_parameters_then_persistent_buffers_per_module():
    keys = list(nested().state_dict())
    assert keys == ["0.weight", "0.bias", "1.0.scale", "1.0.total", "1.0.steps", "1.1.weight", "1.1.bias",
                    "1.1.running_mean", "1.1.running_var", "1.1.num_batches_tracked", "2.scale", "2.total",
                    "2.steps"]


def test_assigning_a_buffer_name_updates_the_buffer():
    m = Counter()
    m.total = np.full(2, 5.0, np.float32)
    assert isinstance(m.total, xpnet.Tensor) and np.all(m.total.numpy() == 5.0)
    m.later = xpnet.tensor(np.ones(4))
    assert "later" in dict(m.named_buffers()) and "later" in m.state_dict()
    m.total = None
    assert "total" not in m.state_dict() and m.total is None
    with pytest.raises(TypeError, match="cannot use int as buffer 'steps'"):
        m.steps = 3
    m.steps = nn.Parameter(np.zeros(1))  # a Parameter replaces the buffer, as in PyTorch
    assert "steps" not in dict(m.named_buffers()) and "steps" in dict(m.named_parameters())


def test_register_buffer_refuses_bad_names_and_existing_attributes():
    m = Counter()
    for name in ["", "a.b", 3]:
        with pytest.raises(KeyError, match="buffer name"):
            m.register_buffer(name, None)
    for name in ["scale", "training", "forward"]:
        with pytest.raises(KeyError, match=f"attribute '{name}' already exists"):
            m.register_buffer(name, None)
    with pytest.raises(TypeError, match="cannot use list as buffer 'x'"):
        m.register_buffer("x", [1.0, 2.0])
    with pytest.raises(AttributeError, match="'Counter' object has no attribute 'missing'"):
        m.missing


def test_state_dict_values_are_host_copies():
    m = Counter()
    state = m.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    assert state["steps"].dtype == np.int64 and state["steps"].shape == ()
    state["total"][:] = 7.0
    assert np.all(m.total.numpy() == 0.0)


def test_buffers_round_trip_through_load_state_dict_keeping_their_dtype():
    source, target = nested(), nested()
    for _, b in source.named_buffers():
        b.data += 3
    state = source.state_dict()
    state["1.1.num_batches_tracked"] = np.array(3.0)  # a float value: the buffer stays int64
    target.load_state_dict(state)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)
    assert target[1][1].num_batches_tracked.dtype == np.int64
    assert np.all(target[2].scratch.numpy() == 0)  # not persistent: neither saved nor loaded


def test_load_state_dict_checks_buffers_before_writing_anything():
    model = nested()
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["2.total"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"2\.total.*\(5,\)"):
        model.load_state_dict(state)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match=r"missing keys \['1.1.running_var'\]"):
        model.load_state_dict({k: v for k, v in before.items() if k != "1.1.running_var"})
    with pytest.raises(KeyError, match=r"unexpected keys \['2.scratch'\]"):
        model.load_state_dict({**before, "2.scratch": np.zeros(3, np.float32)})
    model.load_state_dict({"2.steps": np.array(9)}, strict=False)
    assert model[2].steps.item() == 9


def test_to_casts_float_parameters_and_buffers_only():
    model = nested()
    assert model.to(np.float64) is model
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        expected = np.int64 if name.endswith(("steps", "num_batches_tracked")) else np.float64
        assert t.dtype == expected, name
    model.to(np.float32)
    assert model[2].scratch.dtype == np.float32 and model[2].steps.dtype == np.int64
    bn = nn.BatchNorm2d(3).double()
    assert bn.running_var.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    bn(xpnet.tensor(np.random.default_rng(0).standard_normal((2, 3, 2, 2))))
    assert bn.num_batches_tracked.item() == 1
    with pytest.raises(TypeError, match="floating-point dtypes, got int64"):
        model.to(np.int64)


def test_checkpoint_files_hold_buffers(tmp_path):
    model = nested()
    for _, b in model.named_buffers():
        b.data += 2
    save_checkpoint(tmp_path / "c.npz", model.state_dict(), optim.SGD(model.parameters(), lr=0.1).state_dict(), {})
    restored = nested()
    restored.load_state_dict(load_checkpoint(tmp_path / "c.npz").weights)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)
        assert restored.state_dict()[key].dtype == value.dtype


@requires_torch
def test_state_dict_matches_torch_batchnorm_keys_and_values():
    xpnet.set_default_dtype(np.float64)
    ours = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    theirs = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 2))
    ours(xpnet.tensor(x))
    with torch.no_grad():
        theirs(torch.tensor(x))
    reference = theirs.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(reference)
    for key, value in reference.items():
        assert mine[key].dtype == value.numpy().dtype and mine[key].shape == tuple(value.shape), key
        np.testing.assert_allclose(mine[key], value.numpy(), rtol=1e-12, err_msg=key)
    back = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    back.load_state_dict(reference)  # torch tensors load too
    assert back[1].num_batches_tracked.item() == 1 and back[1].num_batches_tracked.dtype == np.int64


def test_deepcopy_copies_buffers():
    """xpnet.check nudges a deep copy of a model: its buffers must be its own."""
    model = nested()
    twin = copy.deepcopy(model)
    twin[2].total.data += 1
    assert np.all(model[2].total.numpy() == 0) and np.all(twin[2].total.numpy() == 1)
    assert list(twin.state_dict()) == list(model.state_dict())
