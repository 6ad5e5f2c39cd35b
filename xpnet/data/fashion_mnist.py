"""Fashion-MNIST (Zalando Research): MNIST's IDX format, 28x28 grayscale images of 10 clothing classes.

Resolution, first hit wins: a path the user names (argument or ``XPNET_DATA``), the user cache
(fashion-mnist.npz), Debian's ``dataset-fashion-mnist`` package, a checksum-verified download (see
``xpnet.data.sources``).
"""

from __future__ import annotations

from pathlib import Path

from xpnet.data.idx_datasets import IDX_NAMES, IdxSpec, idx_files
from xpnet.data.sources import OfflineSource

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# SHA-256 of the decompressed files (the .gz wrappers differ between upstream and Debian; their contents do not).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
           "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the package installs the four .gz files


def _debian_dir() -> Path | None:
    """The Debian package's folder if it holds all four IDX files."""
    return DEBIAN_DIR if len(idx_files(DEBIAN_DIR)) == len(IDX_NAMES) else None


class FashionMnistSpec(IdxSpec):
    """Fashion-MNIST in its IDX files, also found where Debian's package installs them."""

    name = "fashion-mnist"
    title = "Fashion-MNIST"
    classes = CLASSES
    image_size = (28, 28)
    mirrors = MIRRORS
    checksums = SHA256

    def offline_sources(self) -> list[OfflineSource]:
        return [OfflineSource(f"Debian package {DEBIAN_PACKAGE}", _debian_dir, self.read_verified,
                              lambda path: f"Debian package {DEBIAN_PACKAGE} ({path})",
                              f"apt install {DEBIAN_PACKAGE}  (installs the IDX files in {DEBIAN_DIR}; converted "
                              f"once into the cache)")]


SPEC = FashionMnistSpec()
