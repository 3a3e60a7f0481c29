"""Registered datasets of the data contract; importing this package registers them."""

from adperception.data.datasets.base import MTLDataset, build_pipeline
from adperception.data.datasets.bdd100k import BDD100KMTL
from adperception.data.datasets.cityscapes import CityscapesMTL
from adperception.data.datasets.digits import DigitsMTL
from adperception.data.datasets.mnist import MNISTMTL
from adperception.data.datasets.nyuv2 import NYUv2MTL
from adperception.data.datasets.synthdrive import SynthDrive

__all__ = [
    "BDD100KMTL",
    "CityscapesMTL",
    "DigitsMTL",
    "MNISTMTL",
    "MTLDataset",
    "NYUv2MTL",
    "SynthDrive",
    "build_pipeline",
]
