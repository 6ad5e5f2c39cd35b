"""End-to-end: LeNet-5 learns a small synthetic image set, and training is bit-for-bit reproducible."""

import numpy as np

import xpnet
from xpnet import nn, optim


def synthetic_images(n=64, classes=4, seed=0):
    """Each class is a fixed random 28x28 template plus noise: learnable, but not trivially by one pixel."""
    rng = np.random.default_rng(seed)
    templates = rng.random((classes, 1, 28, 28), dtype=np.float32)
    labels = np.arange(n) % classes
    images = 0.6 * templates[labels] + 0.4 * rng.random((n, 1, 28, 28), dtype=np.float32)
    return images.astype(np.float32), labels


def train_lenet(steps=300, seed=0):
    images, labels = synthetic_images()
    xpnet.manual_seed(seed)
    model = xpnet.build_model("lenet5")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    order = np.random.default_rng(seed)
    for _ in range(steps):
        idx = order.choice(len(images), 16, replace=False)
        opt.zero_grad()
        loss_fn(model(xpnet.tensor(images[idx])), labels[idx]).backward()
        opt.step()
    model.eval()
    with xpnet.no_grad():
        predictions = model(xpnet.tensor(images)).numpy().argmax(axis=1)
    return model.state_dict(), float((predictions == labels).mean())


def test_lenet5_fits_synthetic_set_and_is_reproducible():
    weights_a, accuracy = train_lenet()
    assert accuracy == 1.0
    weights_b, _ = train_lenet()
    assert all(np.array_equal(weights_a[k], weights_b[k]) for k in weights_a)
    weights_c, _ = train_lenet(steps=3, seed=1)
    assert not np.array_equal(weights_a["0.weight"], weights_c["0.weight"])
