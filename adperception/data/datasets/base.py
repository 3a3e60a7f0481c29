"""What every dataset of the data contract (docs/design.md §3) shares: the raw-sample hook, the
pipeline built from the project's own transform registry, and the file-consistency errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from mmengine.dataset import BaseDataset, force_full_init

from adperception.data.formats import DataFileError, check_size  # noqa: F401  (re-export)
from adperception.registry import TRANSFORMS


def build_pipeline(pipeline: Iterable[dict | Callable]) -> list[Callable]:
    """Build transform dicts from ``adperception``'s TRANSFORMS; pass callables through.

    Our transform names (Resize, RandomFlip, ...) collide with mmcv's in mmengine's root
    registry, so they are built here in our scope rather than by mmengine's ``Compose``.
    """
    steps = list(pipeline)
    if any(isinstance(step, dict) for step in steps):
        import adperception.data.transforms  # noqa: F401  (registers the transforms)
    return [
        TRANSFORMS.build({"_scope_": "adperception", **step}) if isinstance(step, dict) else step
        for step in steps
    ]


def missing_files_error(kind: str, missing: Sequence[str], total: int) -> DataFileError:
    """The error for a file kind that some samples have and others lack."""
    shown = "\n  ".join(missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return DataFileError(
        f"{len(missing)} of {total} samples lack their {kind} file, while the others have one; "
        f"missing:\n  {shown}{more}"
    )


def require_dir(path: str, what: str) -> None:
    """Raise ``DataFileError`` naming ``path`` when the folder does not exist."""
    if not os.path.isdir(path):
        raise DataFileError(f"{path}: {what} folder is missing")


class MTLDataset(BaseDataset):
    """Base of the multi-task datasets: ``get_raw_sample(idx)`` decodes the contract dict,
    ``dataset[idx]`` runs the pipeline on it.

    Subclasses implement ``load_data_list`` (one dict of file paths per sample; the tasks the
    dataset provides are fixed there, in ``self._tasks``) and ``get_raw_sample``.
    """

    def __init__(
        self, *, data_root: str, pipeline: Sequence[dict | Callable] = (), **kwargs
    ) -> None:
        self._tasks: tuple[str, ...] = ()
        super().__init__(data_root=data_root, pipeline=build_pipeline(pipeline), **kwargs)

    @property
    @force_full_init
    def tasks(self) -> tuple[str, ...]:
        """The registered tasks (``adperception.tasks``) whose targets the dataset provides."""
        return self._tasks

    def get_raw_sample(self, idx: int) -> dict:
        """The decoded sample of the data contract, before any transform."""
        raise NotImplementedError

    def image_sample(self, idx: int, read_image: Callable[[str], np.ndarray]) -> tuple[dict, dict]:
        """Sample ``idx``'s file paths, and the contract's image part (``img`` decoded by the
        format's ``read_image``, its path, index and shape) for ``get_raw_sample`` to add the
        targets to."""
        info = self.get_data_info(idx)
        img = read_image(info["img_path"])
        shape = img.shape[:2]
        sample = dict(
            img=img,
            img_path=info["img_path"],
            sample_idx=info["sample_idx"],
            ori_shape=shape,
            img_shape=shape,
        )
        return info, sample

    def prepare_data(self, idx: int) -> dict | None:
        return self.pipeline(self.get_raw_sample(idx))
