"""SynthDrive, our generated driving scenes: the Cityscapes layout plus normals, read by the
Cityscapes reader itself (city folder ``synthdrive``, stems like ``synthdrive_000000_000019``)."""

from __future__ import annotations

from adperception.data.datasets.cityscapes import CityscapesMTL
from adperception.registry import DATASETS


@DATASETS.register_module()
class SynthDrive(CityscapesMTL):
    """The generated tree; unlike real Cityscapes it must carry normals."""

    REQUIRED_TASKS = ("normals",)

    def __init__(self, *, data_root: str = "data/synthdrive", split: str = "train", **kwargs):
        super().__init__(data_root=data_root, split=split, **kwargs)
