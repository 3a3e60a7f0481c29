"""MultiTaskMetric and the depth / normals statistics vs hand-computed values and pycocotools."""

from __future__ import annotations

import contextlib
import io
import math
import pickle

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData, PixelData
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from adperception.data.structures import MTLDataSample
from adperception.evaluation import (
    MultiTaskMetric,
    angular_errors,
    normals_stats,
    summarize_normals,
)
from adperception.evaluation.normals import BIN_WIDTH
from adperception.registry import METRICS

DET_CLASSES = ("person", "car", "bicycle")
SEG_CLASSES = ("road", "car", "sky")
#: A value on a bin edge lands in the bin above: the centre is BIN_WIDTH / 2 off, up to rounding.
MEDIAN_TOLERANCE = BIN_WIDTH / 2 + 1e-9
ALL_KEYS = {
    "det/mAP",
    "det/mAP_50",
    "seg/mIoU",
    "seg/aAcc",
    "depth/abs_err",
    "depth/abs_rel",
    "depth/rmse",
    "depth/delta1",
    "normals/mean",
    "normals/median",
    "normals/within_11.25",
    "normals/within_22.5",
    "normals/within_30",
}


def sample(h: int, w: int, **fields: torch.Tensor | dict[str, torch.Tensor]) -> MTLDataSample:
    """A packed sample at img_shape (h, w): maps become PixelData, dicts InstanceData."""
    out = MTLDataSample(metainfo={"img_shape": (h, w), "pad_shape": (h, w)})
    for name, value in fields.items():
        data = InstanceData(**value) if isinstance(value, dict) else PixelData(data=value)
        setattr(out, name, data)
    return out


def evaluate(samples: list[MTLDataSample], **kwargs: object) -> dict[str, float]:
    metric = MultiTaskMetric(det_classes=DET_CLASSES, seg_classes=SEG_CLASSES, **kwargs)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's summary table
        metric.process({}, [s.to_dict() for s in samples])
        return metric.evaluate(len(samples))


def depth(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None]


def normals_at(angles_deg: list[float]) -> torch.Tensor:
    """3×1×N unit vectors at the given angles from +z, rotated about y."""
    t = np.deg2rad(np.asarray(angles_deg))
    vectors = np.stack([np.sin(t), np.zeros_like(t), np.cos(t)])
    return torch.from_numpy(vectors[:, None, :]).float()


# --- depth -----------------------------------------------------------------------------------


def test_depth_2x2_by_hand() -> None:
    # Valid pixels (gt > 0): (d, d̂) = (1, 1.5), (2, 2), (4, 2); the gt-0 pixel's 7 m is ignored.
    gt = depth([[1.0, 2.0], [0.0, 4.0]])
    pred = depth([[1.5, 2.0], [7.0, 2.0]])
    metrics = evaluate([sample(2, 2, gt_depth=gt, pred_depth=pred)])
    assert metrics["depth/abs_err"] == pytest.approx((0.5 + 0 + 2) / 3)
    assert metrics["depth/abs_rel"] == pytest.approx((0.5 / 1 + 0 / 2 + 2 / 4) / 3)
    assert metrics["depth/rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 4) / 3))
    # ratios 1.5, 1, 2: only the exact pixel is below 1.25
    assert metrics["depth/delta1"] == pytest.approx(100 / 3)


def test_depth_is_pixel_weighted_over_the_dataset() -> None:
    rng = np.random.default_rng(0)
    gts = [rng.uniform(1, 50, (1, 3, 5)), rng.uniform(1, 50, (1, 6, 4))]
    gts[1][0, :4] = 0  # the second image keeps 8 of its 24 pixels
    preds = [g * rng.uniform(0.7, 1.4, g.shape) for g in gts]
    samples = [
        sample(g.shape[1], g.shape[2], gt_depth=torch.from_numpy(g), pred_depth=torch.from_numpy(p))
        for g, p in zip(gts, preds, strict=True)
    ]
    valid = np.concatenate([g[g > 0] for g in gts])
    estimate = np.concatenate([p[g > 0] for g, p in zip(gts, preds, strict=True)])
    metrics = evaluate(samples)
    assert metrics["depth/abs_err"] == pytest.approx(np.mean(np.abs(estimate - valid)))
    assert metrics["depth/abs_rel"] == pytest.approx(np.mean(np.abs(estimate - valid) / valid))
    assert metrics["depth/rmse"] == pytest.approx(np.sqrt(np.mean((estimate - valid) ** 2)))
    delta = np.maximum(estimate / valid, valid / estimate)
    assert metrics["depth/delta1"] == pytest.approx(100 * np.mean(delta < 1.25))


def test_depth_targets_outside_the_caps_are_ignored() -> None:
    """Strictly inside (min_depth, max_depth), as the depth literature's evaluations."""
    gt = depth([[0.0, 1e-4, 2.0, 80.0, 1.2e5]])
    pred = torch.full_like(gt, 4.0)
    uncapped = evaluate([sample(1, 5, gt_depth=gt, pred_depth=pred)])
    assert uncapped["depth/abs_err"] == pytest.approx((4.0 - 1e-4 + 2.0 + 76.0 + 1.2e5 - 4.0) / 4)
    capped = evaluate([sample(1, 5, gt_depth=gt, pred_depth=pred)], min_depth=1e-3, max_depth=80.0)
    assert capped["depth/abs_err"] == 2.0 and capped["depth/abs_rel"] == 1.0
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        MultiTaskMetric(min_depth=80.0, max_depth=10.0)


def test_depth_without_valid_pixels_is_nan() -> None:
    metrics = evaluate([sample(1, 2, gt_depth=depth([[0.0, 0.0]]), pred_depth=depth([[1, 2]]))])
    assert all(math.isnan(metrics[f"depth/{k}"]) for k in ("abs_err", "abs_rel", "rmse", "delta1"))


# --- normals ---------------------------------------------------------------------------------


def test_normals_known_angles() -> None:
    angles = [0.0, 10.0, 20.0, 90.0]
    gt = torch.cat([normals_at([0.0] * 4), torch.zeros(3, 1, 2)], dim=2)  # 2 invalid pixels
    pred = torch.cat([normals_at(angles), normals_at([170.0, 45.0])], dim=2)
    metrics = evaluate([sample(1, 6, gt_normals=gt, pred_normals=pred)])
    assert metrics["normals/mean"] == pytest.approx(30.0, abs=1e-4)
    assert metrics["normals/median"] == pytest.approx(15.0, abs=MEDIAN_TOLERANCE)
    assert metrics["normals/within_11.25"] == pytest.approx(50.0)
    assert metrics["normals/within_22.5"] == pytest.approx(75.0)
    assert metrics["normals/within_30"] == pytest.approx(75.0)


def test_zero_normal_prediction_is_90_degrees_off() -> None:
    gt = normals_at([0.0, 30.0])
    assert angular_errors(torch.zeros_like(gt), gt).tolist() == pytest.approx([90.0, 90.0])


@pytest.mark.parametrize("sizes", [(7, 11), (6, 10)])  # odd and even pixel counts
def test_normals_match_numpy_over_images(sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    stats, angles = [], []
    for n in sizes:
        gt = rng.normal(size=(3, 1, n))
        gt /= np.linalg.norm(gt, axis=0)
        pred = gt + rng.normal(scale=0.4, size=gt.shape)  # not unit: normalised by the metric
        cos = np.sum(gt * pred, axis=0) / np.linalg.norm(pred, axis=0)
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))).ravel())
        stats.append(normals_stats(torch.from_numpy(pred), torch.from_numpy(gt)))
    angles = np.concatenate(angles)
    summary = summarize_normals(stats)
    assert summary["mean"] == pytest.approx(angles.mean(), abs=1e-9)
    assert abs(summary["median"] - np.median(angles)) <= MEDIAN_TOLERANCE
    for t in (11.25, 22.5, 30):
        assert summary[f"within_{t:g}"] == pytest.approx(100 * np.mean(angles < t))


def test_normals_record_is_a_histogram_not_the_map() -> None:
    rng = np.random.default_rng(3)
    gt = torch.from_numpy(rng.normal(size=(3, 128, 128)))
    pred = gt + 0.05 * torch.from_numpy(rng.normal(size=(3, 128, 128)))
    record = normals_stats(pred.float(), gt.float())
    assert record["bin_counts"].sum() == record["count"] == 128 * 128
    assert len(pickle.dumps(record)) < pred.float().numpy().nbytes / 4


# --- segmentation ----------------------------------------------------------------------------

SEG_GT = [[0, 0, 1], [1, 1, 2], [255, 2, 2]]
SEG_PRED = [[0, 1, 1], [1, 1, 2], [0, 0, 2]]


@pytest.mark.parametrize("classes", [SEG_CLASSES, (*SEG_CLASSES, "absent")])
def test_seg_3x3_by_hand(classes: tuple[str, ...]) -> None:
    # Over the 8 non-ignored pixels: class 0 I=1 U=3, class 1 I=3 U=4, class 2 I=2 U=3;
    # 6 pixels right. A class in neither map has no IoU and leaves the mean alone.
    s = sample(3, 3, gt_sem_seg=torch.tensor([SEG_GT]), pred_sem_seg=torch.tensor([SEG_PRED]))
    metric = MultiTaskMetric(tasks=("seg",), seg_classes=classes)
    metric.process({}, [s.to_dict()])
    metrics = metric.evaluate(1)
    assert metrics == pytest.approx({"seg/mIoU": 100 * (1 / 3 + 3 / 4 + 2 / 3) / 3, "seg/aAcc": 75})


# --- detection -------------------------------------------------------------------------------


def det_sample(gt_boxes: list, gt_labels: list, boxes: list, scores: list, labels: list):
    return sample(
        100,
        120,
        gt_instances={
            "bboxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(gt_labels, dtype=torch.int64),
        },
        pred_instances={
            "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
        },
    )


GT_BOXES = [[10, 10, 50, 60], [60, 20, 110, 90], [5, 70, 30, 95]]
GT_LABELS = [0, 1, 2]


def test_det_perfect_is_100() -> None:
    s = det_sample(GT_BOXES, GT_LABELS, GT_BOXES, [0.9, 0.8, 0.7], GT_LABELS)
    assert evaluate([s], tasks=("det",)) == {"det/mAP": 100.0, "det/mAP_50": 100.0}


def test_det_wrong_classes_is_0() -> None:
    s = det_sample(GT_BOXES, GT_LABELS, GT_BOXES, [0.9, 0.8, 0.7], [1, 2, 0])
    assert evaluate([s], tasks=("det",)) == {"det/mAP": 0.0, "det/mAP_50": 0.0}


def test_det_without_predictions_is_0_and_without_targets_nan() -> None:
    assert evaluate([det_sample(GT_BOXES, GT_LABELS, [], [], [])], tasks=("det",)) == {
        "det/mAP": 0.0,
        "det/mAP_50": 0.0,
    }
    metrics = evaluate([det_sample([], [], GT_BOXES, [0.9, 0.8, 0.7], GT_LABELS)], tasks=("det",))
    assert set(metrics) == {"det/mAP", "det/mAP_50"} and all(map(math.isnan, metrics.values()))


def pycocotools_map(images: list[tuple[list, list, list, list, list]]) -> tuple[float, float]:
    """COCO box mAP and mAP_50 of the same images, straight from pycocotools."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "width": 120, "height": 100} for i in range(len(images))],
        "categories": [{"id": c, "name": n} for c, n in enumerate(DET_CLASSES)],
        "annotations": [
            {
                "id": len(DET_CLASSES) * 100 * i + k + 1,
                "image_id": i,
                "category_id": label,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            for i, (boxes, labels, *_) in enumerate(images)
            for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels, strict=True))
        ],
    }
    gt.createIndex()
    detections = np.array(
        [
            [i, x0, y0, x1 - x0, y1 - y0, score, label]
            for i, (_, _, boxes, scores, labels) in enumerate(images)
            for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True)
        ]
    )
    coco_eval = COCOeval(gt, gt.loadRes(detections), "bbox")
    coco_eval.params.maxDets = [100, 300, 1000]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return 100 * coco_eval.stats[0], 100 * coco_eval.stats[1]


def test_det_intermediate_matches_pycocotools() -> None:
    images = [
        (  # person found tightly, car at IoU ~0.72, a high-scoring false positive, bicycle missed
            GT_BOXES,
            GT_LABELS,
            [[10, 10, 50, 60], [60, 20, 100, 80], [70, 0, 90, 15]],
            [0.9, 0.6, 0.95],
            [0, 1, 1],
        ),
        (  # two persons: one at IoU ~0.55, one duplicate; bicycle shifted off (IoU ~0.33)
            [[20, 20, 60, 90], [70, 10, 100, 50]],
            [0, 0],
            [[25, 25, 65, 95], [20, 20, 60, 90], [70, 10, 100, 50], [10, 70, 40, 95]],
            [0.8, 0.3, 0.7, 0.5],
            [0, 0, 0, 2],
        ),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        expected = pycocotools_map(images)
    metrics = evaluate([det_sample(*image) for image in images], tasks=("det",))
    assert 0 < expected[0] < expected[1] < 100
    # mmdet rounds to 0.001 on its 0-1 scale: 0.05 points here
    assert metrics["det/mAP"] == pytest.approx(expected[0], abs=0.05 + 1e-9)
    assert metrics["det/mAP_50"] == pytest.approx(expected[1], abs=0.05 + 1e-9)


# --- the whole metric ------------------------------------------------------------------------


def full_sample(seed: int, h: int = 4, w: int = 6) -> MTLDataSample:
    rng = np.random.default_rng(seed)
    gt_depth = torch.from_numpy(rng.uniform(0.5, 20, (1, h, w))).float()
    gt_normals = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, h, w))), dim=0)
    return sample(
        h,
        w,
        gt_sem_seg=torch.from_numpy(rng.integers(0, 3, (1, h, w))),
        pred_sem_seg=torch.from_numpy(rng.integers(0, 3, (1, h, w))),
        gt_depth=gt_depth,
        pred_depth=gt_depth * 1.1,
        gt_normals=gt_normals.float(),
        pred_normals=torch.nn.functional.normalize(gt_normals + 0.3, dim=0).float(),
        gt_instances={"bboxes": torch.tensor([[0.0, 0.0, 3.0, 2.0]]), "labels": torch.tensor([1])},
        pred_instances={
            "bboxes": torch.tensor([[0.0, 0.0, 3.0, 2.0]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        },
    )


def test_evaluator_with_data_samples_and_dataset_meta() -> None:
    init_default_scope("adperception")
    evaluator = Evaluator({"type": "MultiTaskMetric"})
    evaluator.dataset_meta = {"classes": SEG_CLASSES, "det_classes": DET_CLASSES}
    samples = [full_sample(seed) for seed in range(3)]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.process(samples[:2])
        evaluator.process(samples[2:])
        metrics = evaluator.evaluate(len(samples))
    assert set(metrics) == ALL_KEYS
    assert metrics == pytest.approx(evaluate(samples), nan_ok=False)
    assert metrics["det/mAP"] == 100.0
    assert metrics["depth/delta1"] == 100.0  # every ratio is 1.1
    assert metrics["depth/abs_rel"] == pytest.approx(0.1, rel=1e-6)


def test_registered_and_builds_from_config() -> None:
    metric = METRICS.build({"type": "MultiTaskMetric", "tasks": ["depth"]})
    assert isinstance(metric, MultiTaskMetric) and metric.tasks == ("depth",)


def test_tasks_missing_from_samples_are_skipped() -> None:
    only_depth = sample(1, 2, gt_depth=depth([[1.0, 2.0]]), pred_depth=depth([[1.0, 2.0]]))
    nothing = sample(1, 2, pred_depth=depth([[1.0, 2.0]]))  # a prediction without target
    metric = MultiTaskMetric()
    metric.process({}, [only_depth.to_dict(), nothing.to_dict()])
    assert len(metric.results) == 2  # one record per sample: mmengine drops padding by count
    assert set(metric.evaluate(2)) == {
        f"depth/{k}" for k in ("abs_err", "abs_rel", "rmse", "delta1")
    }


def test_tasks_not_asked_for_are_skipped() -> None:
    metrics = evaluate([full_sample(0)], tasks=("seg", "normals"))
    assert set(metrics) == {k for k in ALL_KEYS if k.startswith(("seg/", "normals/"))}


def test_target_without_prediction_and_shape_mismatch_raise() -> None:
    metric = MultiTaskMetric(tasks=("seg", "depth"), seg_classes=SEG_CLASSES)
    with pytest.raises(KeyError, match="pred_depth"):
        metric.process({}, [sample(1, 2, gt_depth=depth([[1.0, 2.0]]))])
    # by default a task the model does not predict (a dataset labelling more) is not evaluated
    default = MultiTaskMetric(seg_classes=SEG_CLASSES)
    default.process({}, [sample(1, 2, gt_depth=depth([[1.0, 2.0]]))])
    assert default.results == [{}]
    with pytest.raises(ValueError, match="seg prediction"):
        s = sample(2, 2, gt_sem_seg=torch.zeros(1, 2, 2), pred_sem_seg=torch.zeros(1, 2, 3))
        metric.process({}, [s])
    with pytest.raises(ValueError, match="unknown task .flow."):
        MultiTaskMetric(tasks=("det", "flow"))
