"""Per-pixel classification head (semantic segmentation, drivable area, lane markings): mmseg's
Semantic-FPN decode head and its loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FPNHead
from mmseg.structures import SegDataSample
from torch import Tensor

from adperception.data.structures import MTLDataSample
from adperception.models.heads.dense import FEATURE_STRIDES, crop_to_samples, gather_targets
from adperception.registry import MODELS
from adperception.tasks.base import get_task
from adperception.tasks.label_map import IGNORE_INDEX, LabelMapTask


@MODELS.register_module()
class SegmentationHead(BaseModule):
    """mmseg ``FPNHead`` over the four FPN maps, with our data contract around it.

    ``forward(feats)`` returns logits B×``num_classes``×(Hp/4)×(Wp/4); ``loss`` is mmseg's
    ``loss_by_feat`` (logits resized to the targets, cross-entropy averaged over non-ignored
    pixels) on targets padded to (Hp, Wp) with 255, as mmseg's own preprocessor would pad them.
    ``loss_decode`` is built in mmseg's scope, so plain mmseg loss names resolve.

    Args:
        task: the class-map task it serves (``seg``, ``drivable``, ``lanes``): its target and
            prediction fields come from the task registry.
        binary: train "any class" against class 0 (``num_classes`` 2): every labelled target id
            above 0 becomes 1, e.g. lane / no lane from a map of lane categories.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        task: str = "seg",
        binary: bool = False,
        channels: int,
        num_classes: int = 19,
        dropout_ratio: float = 0.1,
        norm_cfg: dict | None = None,
        loss_decode: dict | Sequence[dict] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(get_task(task), LabelMapTask):
            raise ValueError(f"SegmentationHead: '{task}' is not a per-pixel classification task")
        if binary and num_classes != 2:
            raise ValueError(f"SegmentationHead: binary needs num_classes=2, got {num_classes}")
        self.task = task
        self.binary = binary
        if loss_decode is None:
            loss_decode = dict(
                type="mmseg.CrossEntropyLoss",
                use_sigmoid=False,
                loss_weight=1.0,
                avg_non_ignore=True,
            )
        with DefaultScope.overwrite_default_scope("mmseg"):
            self.decode_head = FPNHead(
                in_channels=[in_channels] * len(FEATURE_STRIDES),
                in_index=list(range(len(FEATURE_STRIDES))),
                feature_strides=list(FEATURE_STRIDES),
                channels=channels,
                num_classes=num_classes,
                dropout_ratio=dropout_ratio,
                norm_cfg=norm_cfg,
                loss_decode=loss_decode,
                ignore_index=IGNORE_INDEX,
                align_corners=False,
            )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.decode_head(list(feats))

    def loss(
        self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        return self.loss_by_feat(self(feats), data_samples)

    def loss_by_feat(
        self, logits: Tensor, data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        """mmseg's loss terms (``loss_ce`` by default) of ``logits`` against the task's target;
        mmseg's ``acc_seg`` is dropped, since every returned key is a loss to sum."""
        field = get_task(self.task).gt_field
        # Only the labelled samples count: per-sample terms (Dice) would average in the others.
        labelled = [i for i, sample in enumerate(data_samples) if field in sample]
        if len(labelled) < len(data_samples):
            logits = logits[labelled]
            data_samples = [data_samples[i] for i in labelled]
        labels = gather_targets(
            data_samples,
            field,
            channels=1,
            pad_value=IGNORE_INDEX,
            dtype=torch.int64,
            device=logits.device,
        )
        if self.binary:
            labels = torch.where((labels > 0) & (labels != IGNORE_INDEX), 1, labels)
        padded = [SegDataSample(gt_sem_seg=PixelData(data=label)) for label in labels]
        losses = self.decode_head.loss_by_feat(logits.float(), padded)
        return {key: value for key, value in losses.items() if key.startswith("loss")}

    def predict(self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]) -> None:
        self.predict_by_feat(self(feats), data_samples)

    def predict_by_feat(self, logits: Tensor, data_samples: Sequence[MTLDataSample]) -> None:
        """Set the task's prediction (1×h×w int64 class ids at ``img_shape``) on each sample."""
        field = get_task(self.task).pred_field
        for sample, crop in crop_to_samples(logits, data_samples):
            setattr(sample, field, PixelData(data=crop.argmax(dim=0, keepdim=True)))
