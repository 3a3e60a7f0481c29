"""Datasets (Cityscapes layout, NYUv2, SynthDrive) and target-consistent transforms."""
