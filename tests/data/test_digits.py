"""DigitsMTL: the fixed stratified split of scikit-learn's digits and the two tasks' labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.dataset import default_collate
from sklearn.datasets import load_digits

from adperception.data.datasets.digits import split_indices
from adperception.registry import DATASETS


def build(split: str):
    return DATASETS.build(dict(type="DigitsMTL", split=split))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def labels(dataset, task: str) -> np.ndarray:
    return np.array([int(dataset[i]["data_samples"][task]) for i in range(len(dataset))])


def test_split_sizes_and_disjoint(digits) -> None:
    train, test = split_indices(digits.target, "train"), split_indices(digits.target, "test")
    assert (len(train), len(test)) == (1437, 360)
    assert len(build("train")) == 1437 and len(build("test")) == 360
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(1797))


def test_split_is_stratified_and_fixed(digits) -> None:
    test = build("test")
    per_class = np.bincount(labels(test, "digit"), minlength=10)
    expected = 0.2 * np.bincount(digits.target, minlength=10)
    assert np.all(np.abs(per_class - expected) <= 1)
    again = build("test")
    for i in (0, 100, 359):
        assert torch.equal(test[i]["inputs"], again[i]["inputs"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_items_match_the_source_and_parity_is_derived(digits, split: str) -> None:
    dataset = build(split)
    indices = split_indices(digits.target, split)
    digit, parity = labels(dataset, "digit"), labels(dataset, "parity")
    np.testing.assert_array_equal(digit, digits.target[indices])
    np.testing.assert_array_equal(parity, digits.target[indices] % 2)
    assert set(digit) == set(range(10)) and set(parity) == {0, 1}
    for i in (0, len(dataset) - 1):
        inputs = dataset[i]["inputs"]
        assert inputs.shape == (1, 8, 8) and inputs.dtype == torch.float32
        np.testing.assert_allclose(inputs[0].numpy(), digits.images[indices[i]] / 16.0)
    images = torch.stack([dataset[i]["inputs"] for i in range(len(dataset))])
    assert images.min() == 0.0 and images.max() == 1.0


def test_default_collate_batches_labels_per_task() -> None:
    dataset = build("test")
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 1, 8, 8)
    assert batch["data_samples"]["digit"].dtype == torch.int64
    assert torch.equal(batch["data_samples"]["parity"], batch["data_samples"]["digit"] % 2)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be"):
        build("val")
