"""Datasets of the data contract (DESIGN.md §3), their transforms and the SynthDrive generator.

Importing this package registers the datasets and transforms in ``adperception.registry``.
"""

from adperception.data import datasets, transforms  # noqa: F401
