"""The export path's padding mask (``DetectionHead.forward`` with a tensor mask) against mmdet's
own, which ``predict`` builds from each sample's img_shape, for every DETR family."""

from __future__ import annotations

import pytest
import torch

from adperception.tasks.det import detections, padding_mask
from tests.models.test_detection_head import (
    DETECTORS,
    NUM_CLASSES,
    QUERIES,
    _feats,
    _head,
    _mixed_batch,
)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_forward_with_a_padding_mask_equals_predict(name: str) -> None:
    """Three image sizes in one batch: the single-level detectors' stride-32 map and the
    multi-level ones' finer maps have padded cells, which both paths must mask alike."""
    head = _head(name).eval()
    samples, pad_shape = _mixed_batch()
    feats = [feat.detach() for feat in _feats(len(samples), pad_shape, head.detector.embed_dims)]
    img_shapes = torch.tensor([sample.img_shape for sample in samples])
    with torch.no_grad():
        logits, boxes = head(feats, padding_mask(img_shapes, pad_shape))
        head.predict(feats, samples)
    for index, sample in enumerate(samples):
        xyxy, scores, labels = detections(
            logits[index],
            boxes[index],
            img_shape=sample.img_shape,
            use_sigmoid=head.detector.bbox_head.loss_cls.use_sigmoid,
            num_classes=NUM_CLASSES,
            max_per_img=QUERIES,
        )
        expected = sample.pred_instances
        torch.testing.assert_close(xyxy, expected.bboxes, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(scores, expected.scores, rtol=1e-3, atol=1e-5)
        assert labels.tolist() == expected.labels.tolist()
