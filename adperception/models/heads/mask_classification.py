"""Semantic segmentation by mask classification: mmseg's Mask2Former head decoding the shared
encoder's memory (the multi-decoder transformer's segmentation decoder).

Mask2Former's pixel decoder is the same multi-scale deformable encoder as the model's
``DeformableEncoderNeck``, so here the head reads the neck's maps in its place and keeps its
masked-attention transformer decoder, its Hungarian-matched mask loss and its inference
(class probabilities times mask probabilities, summed over queries) unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.models.decode_heads import Mask2FormerHead
from mmseg.structures import SegDataSample
from torch import Tensor

from adperception.data.structures import MTLDataSample
from adperception.models.heads.dense import FEATURE_STRIDES, crop_to_samples, gather_targets
from adperception.registry import MODELS
from adperception.tasks.base import get_task
from adperception.tasks.label_map import IGNORE_INDEX, LabelMapTask

#: The shared encoder provides these; the head config must not set them.
_PROVIDED_KEYS = ("pixel_decoder", "in_channels", "strides", "feat_channels", "out_channels")


class EncodedMemory(BaseModule):
    """Mask2Former's pixel-decoder slot filled by maps already encoded: the neck's (stride 4,
    8, 16, 32) become mmdet's (mask features, [stride 32, 16, 8]).

    ``encoder`` only says how many levels the memory has, where mmdet's head checks it.
    """

    def __init__(
        self, *, in_channels: list[int], feat_channels: int, out_channels: int, encoder: dict
    ) -> None:
        super().__init__()
        levels = encoder["layer_cfg"]["self_attn_cfg"]["num_levels"]
        if len(in_channels) != levels + 1 or {*in_channels, feat_channels} != {out_channels}:
            raise ValueError(
                f"the encoded memory is a pixel map and {levels} levels of {out_channels} "
                f"channels each; got in_channels={in_channels}, feat_channels={feat_channels}"
            )

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        pixel, *levels = feats
        return pixel, levels[::-1]


@MODELS.register_module()
class MaskClassificationHead(BaseModule):
    """mmseg's ``Mask2FormerHead`` over the shared encoder's memory, with our data contract.

    Args:
        decode_head: mmseg's Mask2Former head config (its cityscapes config pastes in) without
            the keys the shared encoder provides (``pixel_decoder``, ``in_channels``,
            ``strides``, ``feat_channels``, ``out_channels``); types resolve in mmseg's scope.
        in_channels: channels of the encoder's maps, which are the decoder's.
        num_classes: classes of the task's map (19 for Cityscapes); ``decode_head.num_classes``
            is set from it.
        task: the class-map task it serves (``seg``, ``drivable``, ``lanes``).

    ``forward(feats)`` returns class scores B×``num_classes``×(Hp/4)×(Wp/4) of the last
    decoder layer (probabilities times mask probabilities, summed over queries: mmseg's
    inference); ``predict`` takes their argmax. ``loss`` is mmseg's, on every decoder layer
    (``loss_cls``, ``loss_mask``, ``loss_dice`` and ``loss_d<k>_*``), with targets padded to
    (Hp, Wp) with 255; mmseg turns ignored pixels into background of every class mask.
    """

    def __init__(
        self,
        *,
        decode_head: Mapping,
        in_channels: int,
        num_classes: int = 19,
        task: str = "seg",
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(get_task(task), LabelMapTask):
            raise ValueError(f"MaskClassificationHead: '{task}' is not a per-pixel class task")
        cfg = copy.deepcopy(dict(decode_head))
        cfg.pop("type", None)
        given = [key for key in _PROVIDED_KEYS if key in cfg]
        if given:
            raise ValueError(f"decode_head must not set {given}: the shared encoder provides them")
        if cfg.get("num_classes", num_classes) != num_classes:
            raise ValueError(f"decode_head.num_classes={cfg['num_classes']} but {num_classes=}")
        levels = cfg.get("num_transformer_feat_level", 3)
        if levels != len(FEATURE_STRIDES) - 1:
            raise ValueError(
                f"the shared encoder has {len(FEATURE_STRIDES) - 1} levels, "
                f"decode_head.num_transformer_feat_level={levels}"
            )
        cfg.update(
            in_channels=[in_channels] * len(FEATURE_STRIDES),
            feat_channels=in_channels,
            out_channels=in_channels,
            num_classes=num_classes,
            ignore_index=IGNORE_INDEX,
            pixel_decoder=dict(
                type=EncodedMemory,
                encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=levels))),
            ),
        )
        self.task = task
        with DefaultScope.overwrite_default_scope("mmseg"):
            # mmdet's head reads its config by attribute
            self.decode_head = Mask2FormerHead(**ConfigDict(cfg))

    def init_weights(self) -> None:
        super().init_weights()
        self.decode_head.init_weights()  # mmdet's Xavier init of the transformer decoder

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        classes, masks = self._decode(feats)
        scores = torch.softmax(classes[-1], dim=-1)[..., :-1]  # without "no object"
        return torch.einsum("bqc,bqhw->bchw", scores, masks[-1].sigmoid())

    def _decode(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.decode_head(list(feats), [])

    def loss(
        self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        field = get_task(self.task).gt_field
        labelled = [i for i, sample in enumerate(data_samples) if field in sample]
        if not labelled:
            raise ValueError(f"MaskClassificationHead.loss: no sample of the batch has {field}")
        if len(labelled) < len(data_samples):
            index = torch.tensor(labelled, device=feats[0].device)
            feats = [feat.index_select(0, index) for feat in feats]
            data_samples = [data_samples[i] for i in labelled]
        labels = gather_targets(
            data_samples,
            field,
            channels=1,
            pad_value=IGNORE_INDEX,
            dtype=torch.int64,
            device=feats[0].device,
        )
        padded = [
            SegDataSample(metainfo=sample.metainfo, gt_sem_seg=PixelData(data=label))
            for sample, label in zip(data_samples, labels, strict=True)
        ]
        instances, metas = self.decode_head._seg_data_to_instance_data(padded)
        classes, masks = self._decode(feats)
        losses = self.decode_head.loss_by_feat(classes, masks, instances, metas)
        return {
            "loss_" + key.replace("loss_", "").replace(".", "_"): value
            for key, value in losses.items()
        }

    def predict(self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]) -> None:
        """Set the task's prediction (1×h×w int64 class ids at ``img_shape``) on each sample."""
        field = get_task(self.task).pred_field
        for sample, crop in crop_to_samples(self(feats), data_samples):
            setattr(sample, field, PixelData(data=crop.argmax(dim=0, keepdim=True)))
