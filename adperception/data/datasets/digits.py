"""scikit-learn's handwritten digits (1797 images of 8×8) as a two-task problem: the digit
(10 classes) and its parity (even 0 / odd 1). The classic small testbed for loss balancing: two
tasks that can share every feature, on real data that ships with scikit-learn (no download)."""

from __future__ import annotations

import numpy as np
import torch
from mmengine.dataset import BaseDataset

from adperception.registry import DATASETS

#: The test share of the fixed split (360 of 1797 images).
TEST_SIZE = 0.2
#: ``load_digits`` pixels are counts of set pixels in 4×4 blocks of the 32×32 original: 0-16.
PIXEL_MAX = 16.0


def split_indices(
    targets: np.ndarray, split: str, test_size: float | int = TEST_SIZE
) -> np.ndarray:
    """The sorted indices of ``split`` in a fixed split (``test_size``: a share or a count, as
    scikit-learn takes it), stratified by digit."""
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    train, test = train_test_split(
        np.arange(len(targets)), test_size=test_size, random_state=0, stratify=targets
    )
    return np.sort(train if split == "train" else test)


@DATASETS.register_module()
class DigitsMTL(BaseDataset):
    """``dataset[i]`` is ``dict(inputs=float32 1×8×8 in [0, 1], data_samples=dict(digit=...,
    parity=...))`` with int64 scalar labels; batch it with ``default_collate``.

    Not an image dataset of the data contract (docs/design.md §3): it has no files and no pipeline.

    Args:
        split: ``'train'`` (1437 images) or ``'test'`` (360), the same for every run.
    """

    def __init__(self, *, split: str = "train", **kwargs) -> None:
        self.split = split
        super().__init__(serialize_data=False, **kwargs)

    def load_data_list(self) -> list[dict]:
        # Imported here: scikit-learn takes 0.7 s to import, which every other user of
        # adperception.data would pay for nothing.
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / PIXEL_MAX).astype(np.float32)
        return [
            dict(image=images[i], digit=int(digits.target[i]), parity=int(digits.target[i]) % 2)
            for i in split_indices(digits.target, self.split)
        ]

    def prepare_data(self, idx: int) -> dict:
        info = self.data_list[idx]
        return dict(
            inputs=torch.tensor(info["image"]).unsqueeze(0),
            data_samples=dict(
                digit=torch.tensor(info["digit"]), parity=torch.tensor(info["parity"])
            ),
        )
