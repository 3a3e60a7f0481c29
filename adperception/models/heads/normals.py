"""Surface normals head: Semantic-FPN trunk regressing unit normals, with a cosine loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.structures import PixelData
from torch import Tensor, nn

from adperception.data.structures import MTLDataSample
from adperception.models.heads.dense import (
    FPNDecoderTrunk,
    crop_to_samples,
    gather_targets,
    upsample,
    zero_loss,
)
from adperception.registry import MODELS


class NormalsHeadBase(BaseModule):
    """What every normals head shares: the cosine loss against ``gt_normals`` and the unit
    prediction. A subclass's ``forward(feats)`` returns unit normals B×3×h×w (x right, y down,
    z forward). ``loss_normals`` is the mean of 1 − cos(n̂, n) over pixels whose gt normal is
    non-zero, with n̂ upsampled bilinearly to (Hp, Wp) and renormalised.
    """

    task = "normals"

    def loss(
        self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        return self.loss_by_feat(self(feats), data_samples)

    def loss_by_feat(
        self, normals: Tensor, data_samples: Sequence[MTLDataSample]
    ) -> dict[str, Tensor]:
        """{'loss_normals'} of B×3×h×w ``normals`` against ``gt_normals``; 0 when no pixel is
        valid."""
        target = gather_targets(
            data_samples,
            "gt_normals",
            channels=3,
            pad_value=0.0,
            dtype=torch.float32,
            device=normals.device,
        )
        pred = F.normalize(upsample(normals.float(), target.shape[-2:]), dim=1)
        valid = target.norm(dim=1) > 0
        if not bool(valid.any()):
            return {"loss_normals": zero_loss(normals)}
        cosine = F.cosine_similarity(pred, target, dim=1)
        return {"loss_normals": (1.0 - cosine[valid]).mean()}

    def predict(self, feats: Sequence[Tensor], data_samples: Sequence[MTLDataSample]) -> None:
        self.predict_by_feat(self(feats), data_samples)

    def predict_by_feat(self, normals: Tensor, data_samples: Sequence[MTLDataSample]) -> None:
        """Set ``pred_normals`` (3×h×w float32 unit vectors at ``img_shape``) on each sample."""
        for sample, crop in crop_to_samples(normals.float(), data_samples):
            sample.pred_normals = PixelData(data=F.normalize(crop, dim=0))


@MODELS.register_module()
class NormalsHead(NormalsHeadBase):
    """Semantic-FPN regression head for camera-frame surface normals, at stride 4."""

    def __init__(self, *, in_channels: int, channels: int, norm_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=dict(type="Normal", std=0.01, override=dict(name="conv_normals")))
        self.trunk = FPNDecoderTrunk(in_channels=in_channels, channels=channels, norm_cfg=norm_cfg)
        self.conv_normals = nn.Conv2d(channels, 3, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return F.normalize(self.conv_normals(self.trunk(feats)), dim=1)
