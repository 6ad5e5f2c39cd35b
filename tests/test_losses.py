"""nll_loss and cross_entropy against PyTorch in float64 (values and input gradients to 1e-10): every
reduction with class weights, ignore_index and label smoothing together, K-dimensional and unbatched inputs,
all targets ignored; central-difference gradient checks; and the errors for bad targets and options."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from backend_fixtures import backend_name  # noqa: F401  (a fixture)

import xpnet
from xpnet import functional as F
from xpnet import nn
from xpnet.gradcheck import max_relative_error

torch = pytest.importorskip("torch", reason="PyTorch is the reference for the losses")

N_CLASSES = 5


def case(shape, seed, ignore_some=True, ignore_index=-100):
    """Logits of ``shape`` (class dimension 1, or 0 for an unbatched (C,)) and fitting targets, some ignored."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 2
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    target = rng.integers(0, N_CLASSES, target_shape)
    if ignore_some and target.size > 1:
        target.reshape(-1)[::3] = ignore_index
    return logits, target


def compare(ours_fn, theirs_fn, logits, target, weight, **options):
    """Loss and input gradient (under a random upstream gradient) from both frameworks."""
    backend = xpnet.get_backend()
    x = xpnet.tensor(logits, requires_grad=True)
    w = None if weight is None else backend.asarray(weight)
    out = ours_fn(x, backend.asarray(target), w, **options)
    g = np.random.default_rng(11).standard_normal(out.shape)
    out.backward(backend.asarray(g))
    tx = torch.tensor(logits, requires_grad=True)
    tw = None if weight is None else torch.from_numpy(weight)
    tout = theirs_fn(tx, torch.from_numpy(np.asarray(target)), tw, **options)
    tout.backward(torch.from_numpy(g))
    return (out.numpy(), backend.to_numpy(x.grad)), (tout.detach().numpy(), tx.grad.numpy())


def assert_matches(ours, theirs):
    (value, grad), (tvalue, tgrad) = ours, theirs
    assert value.shape == tvalue.shape
    np.testing.assert_allclose(value, tvalue, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(grad, tgrad, rtol=0, atol=1e-10)


WEIGHT = np.array([0.5, 2.0, 1.0, 0.25, 3.0])
SHAPES = [(7, N_CLASSES), (N_CLASSES,), (3, N_CLASSES, 4), (2, N_CLASSES, 3, 2), (1, N_CLASSES)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction, weighted, smoothing, ignore_index",
                         list(itertools.product(["mean", "sum", "none"], [False, True], [0.0, 0.2, 1.0], [-100, 2])))
def test_cross_entropy_matches_torch(backend_name, shape, reduction, weighted, smoothing, ignore_index):
    logits, target = case(shape, seed=len(shape) * 31 + abs(ignore_index), ignore_index=ignore_index)
    weight = WEIGHT if weighted else None

    def ours(x, t, w, **kw):
        return F.cross_entropy(x, t, w, **kw)

    def theirs(x, t, w, **kw):
        return torch.nn.functional.cross_entropy(x, t, w, **kw)

    options = dict(reduction=reduction, label_smoothing=smoothing, ignore_index=ignore_index)
    assert_matches(*compare(ours, theirs, logits, target, weight, **options))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction, weighted, ignore_index",
                         list(itertools.product(["mean", "sum", "none"], [False, True], [-100, 0])))
def test_nll_loss_matches_torch(backend_name, shape, reduction, weighted, ignore_index):
    logits, target = case(shape, seed=len(shape) * 7 + abs(ignore_index), ignore_index=ignore_index)
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=0 if len(shape) == 1 else 1).numpy()
    weight = WEIGHT if weighted else None

    def ours(x, t, w, **kw):
        return F.nll_loss(x, t, w, **kw)

    def theirs(x, t, w, **kw):
        return torch.nn.functional.nll_loss(x, t, w, **kw)

    options = dict(reduction=reduction, ignore_index=ignore_index)
    assert_matches(*compare(ours, theirs, log_probs, target, weight, **options))


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_every_target_ignored_gives_nan_mean_and_zero_gradient(smoothing):
    logits = np.random.default_rng(0).standard_normal((3, 4))
    target = np.full(3, -100)
    x = xpnet.tensor(logits, requires_grad=True)
    with np.errstate(all="raise"):
        loss = F.cross_entropy(x, target, label_smoothing=smoothing)
        loss.backward()
    tloss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target),
                                              label_smoothing=smoothing)
    assert np.isnan(loss.item()) and np.isnan(tloss.item())
    np.testing.assert_array_equal(x.grad, np.zeros((3, 4)))
    assert F.cross_entropy(xpnet.tensor(logits), target, reduction="sum").item() == 0.0


def test_gradcheck_cross_entropy_with_everything_at_once():
    logits, target = case((6, N_CLASSES, 2), seed=4)

    def loss(x):
        return F.cross_entropy(x, target, WEIGHT, ignore_index=-100, label_smoothing=0.15)

    assert max_relative_error(loss, [logits]) < 1e-6
    assert max_relative_error(lambda x: F.nll_loss(F.log_softmax(x, dim=1), target, WEIGHT, reduction="sum"),
                              [logits]) < 1e-6


def test_cross_entropy_is_nll_of_log_softmax():
    logits, target = case((8, N_CLASSES), seed=5)
    a = F.cross_entropy(xpnet.tensor(logits), target, WEIGHT).item()
    b = F.nll_loss(F.log_softmax(xpnet.tensor(logits), dim=1), target, WEIGHT).item()
    assert a == pytest.approx(b, rel=1e-14)


def test_loss_dtype_follows_the_input():
    logits, target = case((4, N_CLASSES), seed=6)
    x = xpnet.tensor(logits.astype(np.float32), requires_grad=True)
    loss = F.cross_entropy(x, target.astype(np.int32), WEIGHT, label_smoothing=0.1)
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits.astype(np.float32)),
                                                 torch.from_numpy(target), torch.from_numpy(WEIGHT).float(),
                                                 label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("target, error, message", [
    (np.array([0.0, 1.0, 2.0]), TypeError, "integer class indices"),
    (np.array([True, False, True]), TypeError, "integer class indices"),
    (np.array([0, 5, 1]), IndexError, "target 5 is out of bounds for 5 classes"),
    (np.array([0, -1, 1]), IndexError, "target -1 is out of bounds"),
    (np.array([0, 1]), ValueError, r"target of shape \(2,\) does not fit input of shape \(3, 5\)"),
    (np.array([[0, 1, 2]]), ValueError, "expected \\(3,\\)"),
])
def test_bad_targets_are_refused_clearly(target, error, message):
    logits = xpnet.tensor(np.zeros((3, N_CLASSES)))
    for loss in (F.cross_entropy, F.nll_loss):
        with pytest.raises(error, match=message):
            loss(logits, target)


def test_bad_options_are_refused_clearly():
    logits, target = xpnet.tensor(np.zeros((3, N_CLASSES))), np.array([0, 1, 2])
    with pytest.raises(ValueError, match="'average' is not a valid value for reduction"):
        F.cross_entropy(logits, target, reduction="average")
    with pytest.raises(ValueError, match="label_smoothing must be between 0.0 and 1.0"):
        F.cross_entropy(logits, target, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        F.nll_loss(logits, target, np.ones(4))
    with pytest.raises(ValueError, match="input must be"):
        F.cross_entropy(xpnet.tensor(np.array(1.0)), np.array(0))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        nn.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=-0.1)
    with pytest.raises(TypeError):
        F.cross_entropy(logits, target, None, None, -100)  # PyTorch's deprecated positional slots are not taken
    assert F.cross_entropy(logits, np.array([0, -100, 1]), ignore_index=-100).item() == pytest.approx(np.log(5))


@pytest.mark.parametrize("options", [{}, {"weight": WEIGHT}, {"ignore_index": 1, "reduction": "sum"},
                                     {"weight": WEIGHT, "label_smoothing": 0.1, "reduction": "none"}])
def test_loss_modules_match_torch(options):
    logits, target = case((6, N_CLASSES), seed=7, ignore_index=options.get("ignore_index", -100))
    torch_options = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    ours = nn.CrossEntropyLoss(**options)(xpnet.tensor(logits), target).numpy()
    theirs = torch.nn.CrossEntropyLoss(**torch_options)(torch.from_numpy(logits), torch.from_numpy(target))
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-12)
    nll = {k: v for k, v in options.items() if k != "label_smoothing"}
    torch_nll = {k: v for k, v in torch_options.items() if k != "label_smoothing"}
    log_probs = torch.log_softmax(torch.from_numpy(logits), 1)
    ours = nn.NLLLoss(**nll)(xpnet.tensor(log_probs.numpy()), target).numpy()
    np.testing.assert_allclose(ours, torch.nn.NLLLoss(**torch_nll)(log_probs, torch.from_numpy(target)).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_loss_weight_is_a_buffer_as_in_torch():
    ours, theirs = nn.CrossEntropyLoss(WEIGHT), torch.nn.CrossEntropyLoss(torch.from_numpy(WEIGHT))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    np.testing.assert_array_equal(ours.state_dict()["weight"], WEIGHT)
    assert list(nn.NLLLoss([1.0, 2.0]).state_dict()) == ["weight"] and not nn.NLLLoss().state_dict()
    logits, target = case((4, N_CLASSES), seed=9)
    ours.to(np.float32)
    assert ours(xpnet.tensor(logits.astype(np.float32)), target).dtype == np.float32


def test_xpnet_first_names_still_work():
    logits, target = case((5, N_CLASSES), seed=8, ignore_some=False)
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target)).item()
    assert F.softmax_cross_entropy(xpnet.tensor(logits), target).item() == pytest.approx(expected, rel=1e-14)
    assert nn.SoftmaxCrossEntropyLoss is nn.CrossEntropyLoss
    assert nn.SoftmaxCrossEntropyLoss()(xpnet.tensor(logits), xpnet.tensor(target)).item() == pytest.approx(
        expected, rel=1e-14)


@pytest.mark.parametrize("loss", [nn.CrossEntropyLoss(WEIGHT, label_smoothing=0.1), nn.NLLLoss(ignore_index=1)])
def test_losses_do_not_loop_over_rows_or_classes(loss):
    from test_no_python_loops import traced_lines

    def lines(n, k):
        x = xpnet.tensor(np.random.default_rng(0).standard_normal((n, N_CLASSES, k)), requires_grad=True)
        return traced_lines(lambda: loss(x, np.zeros((n, k), dtype=np.int64)).backward())

    assert lines(2, 1) == lines(64, 1) == lines(2, 9)
