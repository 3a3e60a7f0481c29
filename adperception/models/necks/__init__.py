"""Necks beyond mmdet's FPN: the multi-decoder transformer's shared deformable encoder."""

from adperception.models.necks.deformable_encoder import DeformableEncoderNeck

__all__ = ["DeformableEncoderNeck"]
