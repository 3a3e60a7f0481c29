"""A tiny SynthDrive batch for the model tests: what a dataloader gives a training step."""

from __future__ import annotations

from pathlib import Path

from mmengine.dataset import pseudo_collate

from adperception.data.datasets import SynthDrive
from adperception.data.synth import generate_dataset
from adperception.engine import setup_runtime


def synthdrive_batch(root: Path, seed: int) -> dict:
    """Two 64×128 SynthDrive val frames generated with ``seed`` under ``root``, packed and
    collated."""
    setup_runtime()
    generate_dataset(root, {"val": 2}, seed=seed, height=64, width=128)
    dataset = SynthDrive(data_root=str(root), split="val", pipeline=[dict(type="PackMTLInputs")])
    return pseudo_collate([dataset[0], dataset[1]])
