"""Object detection head: an mmdet DETR-family detector run on the shared FPN maps.

The detector's transformer (``pre_transformer`` -> encoder -> ``pre_decoder`` -> decoder), its
set loss (Hungarian assignment) and its post-processing all come from mmdet unchanged; this
file only feeds it the FPN maps in place of the image backbone and neck it was written with, and
on the export path the padding mask as a tensor in place of the data samples it is built from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.detectors import DetectionTransformer
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from torch import Tensor, nn

from adperception.data.structures import MTLDataSample
from adperception.registry import MODELS

#: The FPN provides the features, the multi-task model normalises the images.
_REPLACED_KEYS = ("backbone", "neck", "data_preprocessor")


@MODELS.register_module()
class DetectionHead(BaseModule):
    """A DETR-family detector (DETR, ConditionalDETR, DABDETR, DeformableDETR, DINO) as a head.

    Args:
        detector: mmdet config of a ``DetectionTransformer`` without ``backbone``, ``neck`` and
            ``data_preprocessor``; types resolve in mmdet's scope, so mmdet's own configs paste
            in unchanged. ``bbox_head.num_classes`` is set from ``num_classes``.
        num_classes: detection classes (8 for Cityscapes' instance classes).
        in_channels: channels of every FPN map; must equal the transformer's ``embed_dims``,
            since the FPN already plays the part of mmdet's ``ChannelMapper`` input projection.
        feat_level: the FPN map a single-level detector reads (-1: stride 32, as DETR's C5).
            Multi-level detectors (those with ``num_feature_levels``) read the last
            ``num_feature_levels`` maps instead.

    Call ``init_weights()`` before training, as mmengine's runner does: mmdet initialises the
    transformer there, and leaves Deformable DETR's ``level_embed`` as ``torch.empty`` until then.
    """

    task = "det"

    def __init__(
        self,
        *,
        detector: Mapping,
        num_classes: int,
        in_channels: int,
        feat_level: int = -1,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = copy.deepcopy(dict(detector))
        given = [key for key in _REPLACED_KEYS if key in cfg]
        if given:
            raise ValueError(f"detector config must not set {given}: the FPN provides features")
        bbox_head = dict(cfg["bbox_head"])
        if bbox_head.get("num_classes", num_classes) != num_classes:
            raise ValueError(
                f"bbox_head.num_classes={bbox_head['num_classes']} but num_classes={num_classes}"
            )
        cfg["bbox_head"] = dict(bbox_head, num_classes=num_classes)
        # The features enter through extract_feat, so the backbone slot passes them through.
        cfg["backbone"] = dict(type=nn.Identity)
        with DefaultScope.overwrite_default_scope("mmdet"):
            self.detector = MMDET_MODELS.build(cfg)
        if not isinstance(self.detector, DetectionTransformer):
            raise TypeError(f"{type(self.detector).__name__} is not an mmdet DetectionTransformer")
        if in_channels != self.detector.embed_dims:
            raise ValueError(
                f"in_channels={in_channels} must equal the transformer's embed_dims="
                f"{self.detector.embed_dims}; set the FPN's out_channels to it"
            )
        self.num_levels: int | None = getattr(self.detector, "num_feature_levels", None)
        self.feat_level = feat_level

    def _select(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if self.num_levels is None:
            return (feats[self.feat_level],)
        if self.num_levels > len(feats):
            raise ValueError(f"detector reads {self.num_levels} levels, got {len(feats)} maps")
        selected = tuple(feats[len(feats) - self.num_levels :])
        if getattr(self.detector, "as_two_stage", False):
            # two-stage selection takes the top-scoring encoder positions as queries
            # (HybridDINO's num_selected adds its one-to-many queries in training)
            queries = getattr(self.detector, "num_selected", self.detector.num_queries)
            positions = sum(int(f.shape[-2]) * int(f.shape[-1]) for f in selected)
            if positions < queries:
                sizes = ", ".join(f"{int(f.shape[-2])}×{int(f.shape[-1])}" for f in selected)
                raise ValueError(
                    f"the detector selects {queries} queries from its "
                    f"encoder's positions, but the maps it reads ({sizes}) have {positions}: "
                    "train and test on larger images or set a smaller num_queries"
                )
        return selected

    def forward(
        self, feats: Sequence[Tensor], padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Raw outputs of the last decoder layer, for export.

        Args:
            feats: FPN maps B×C×(Hp/s)×(Wp/s), s = 4, 8, 16, 32, of a padded batch Hp×Wp.
            padding_mask: B×Hp×Wp bool, True outside each image's ``img_shape``: the mask
                mmdet's DETRs build from the data samples, given as a tensor so that an ONNX
                graph can take it from its inputs. None: every image fills the batch.

        Returns:
            class logits B×Q×K (K = num_classes, + 1 background for softmax DETR) and boxes
            B×Q×4 normalised (cx, cy, w, h) in [0, 1] of each image's ``img_shape``. Call it in
            eval mode: in training, DINO adds denoising queries made from ground truth, which
            ``feats`` alone lack.
        """
        selected = self._select(feats)
        height, width = selected[0].shape[-2:]
        # Equal img_shape and batch_input_shape: mmdet builds no mask (nor in ONNX export).
        shape = (int(height), int(width))
        samples = [
            MTLDataSample(metainfo=dict(img_shape=shape, batch_input_shape=shape))
            for _ in range(selected[0].shape[0])
        ]
        encoder_inputs, decoder_inputs = self.detector.pre_transformer(selected, samples)
        if padding_mask is not None:
            self._mask_padding(selected, padding_mask, encoder_inputs, decoder_inputs)
        # mmdet's forward_transformer after pre_transformer; DINO's pre_decoder reads data
        # samples only for the denoising queries of training.
        decoder_extra, head_inputs = self.detector.pre_decoder(
            **self.detector.forward_encoder(**encoder_inputs)
        )
        decoder_inputs.update(decoder_extra)
        head_inputs.update(self.detector.forward_decoder(**decoder_inputs))
        # Two-stage detectors add encoder proposals in training, which only the loss reads.
        args = [head_inputs[key] for key in ("hidden_states", "references") if key in head_inputs]
        cls_scores, bbox_preds = self.detector.bbox_head(*args)
        return cls_scores[-1], bbox_preds[-1]

    def _mask_padding(
        self,
        feats: tuple[Tensor, ...],
        padding_mask: Tensor,
        encoder_inputs: dict,
        decoder_inputs: dict,
    ) -> None:
        """Replace the padding-dependent inputs of mmdet's unmasked ``pre_transformer`` with
        those of its masked branch (DETR's or Deformable DETR's), built from ``padding_mask``
        rather than from ``img_shape`` in Python: the mask nearest-downsampled to each level,
        the sine encoding normalised over the valid area, and the levels' valid ratios."""
        detector = self.detector
        masks = [
            F.interpolate(padding_mask[:, None].float(), size=feat.shape[-2:]).to(torch.bool)[:, 0]
            for feat in feats
        ]
        batch, channels = feats[0].shape[:2]
        # view, not flatten: mmdet's way of keeping the batch axis dynamic in ONNX
        pos = [
            detector.positional_encoding(mask).view(batch, channels, -1).permute(0, 2, 1)
            for mask in masks
        ]
        memory_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
        if self.num_levels is None:
            encoder_inputs.update(feat_mask=memory_mask, feat_pos=pos[0])
            decoder_inputs.update(memory_mask=memory_mask, memory_pos=pos[0])
            return
        level_pos = [p + detector.level_embed[level].view(1, 1, -1) for level, p in enumerate(pos)]
        valid_ratios = torch.stack([detector.get_valid_ratio(mask) for mask in masks], 1)
        encoder_inputs.update(
            feat_mask=memory_mask, feat_pos=torch.cat(level_pos, 1), valid_ratios=valid_ratios
        )
        decoder_inputs.update(memory_mask=memory_mask, valid_ratios=valid_ratios)

    def loss(
        self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        """mmdet's set loss of every decoder layer (and DINO's denoising/encoder terms).

        mmdet's keys are renamed to start with ``loss``: ``loss_cls`` stays, ``d0.loss_cls``
        becomes ``loss_d0_cls``, ``enc_loss_iou`` becomes ``loss_enc_iou``. Values are scalars
        (mmdet's averaged terms come as 1-element tensors; mean as mmengine's parse_losses).

        Only the samples with ``gt_instances`` count (partial labels): a sample without boxes
        is not a sample whose every query is background, so the others are decoded alone.
        """
        labelled = [i for i, sample in enumerate(data_samples) if "gt_instances" in sample]
        if not labelled:
            raise ValueError("DetectionHead.loss: no sample of the batch has gt_instances")
        if len(labelled) < len(data_samples):
            index = torch.tensor(labelled, device=feats[0].device)
            feats = [feat.index_select(0, index) for feat in feats]
            data_samples = [data_samples[i] for i in labelled]
        losses = self.detector.loss(self._select(feats), list(data_samples))
        return {
            "loss_" + key.replace("loss_", "").replace(".", "_"): value.mean()
            for key, value in losses.items()
        }

    def predict(self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]) -> None:
        """Set ``pred_instances`` (bboxes N×4 xyxy px in img_shape coordinates, scores in [0, 1],
        labels) on each sample, N = ``test_cfg.max_per_img``."""
        self.detector.predict(self._select(feats), list(data_samples), rescale=False)
