"""Datasets of the data contract (docs/design.md §3), their transforms and the SynthDrive generator.

Importing this package registers the datasets and transforms in ``adperception.registry``.
"""

from adperception.data import datasets, transforms  # noqa: F401
