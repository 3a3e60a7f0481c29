"""Depth is evaluated in the original image's metres at its original size, whatever the test
zoom: tools/test.py's path (test pipeline → predict → MultiTaskMetric) against the export API's
``inference`` and against predictions built from the target, plus the depth caps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.structures import PixelData

from adperception.data.datasets.base import build_pipeline
from adperception.data.structures import MTLDataSample
from adperception.data.synth import generate_dataset
from adperception.data.visualize import draw_sample
from adperception.engine import setup_runtime
from adperception.evaluation import MultiTaskMetric
from adperception.evaluation.depth import depth_sums, summarize_depth
from adperception.export import inference
from adperception.export.checkpoint import build_meta
from adperception.export.wrapper import InferenceModel
from adperception.models.heads.depth import DepthHead
from adperception.registry import DATASETS, METRICS, MODELS

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 128)  # (h, w) of the generated SynthDrive images
CAPS = dict(min_depth=1e-3, max_depth=80.0)  # configs/ad_mtl.py's, which the quickstart inherits


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, torch.nn.Module]:
    """The quickstart config on one generated SynthDrive image, its model randomly initialised."""
    setup_runtime()
    root = tmp_path_factory.mktemp("metres")
    generate_dataset(root, {"val": 1}, seed=7, height=SIZE[0], width=SIZE[1])
    cfg = Config.fromfile(ROOT / "configs/quickstart.py")
    cfg.test_dataloader.dataset.data_root = str(root)
    # DINO selects its queries among the encoder's positions: 42 at the 32×64 zoom
    cfg.model.heads.det.detector.num_queries = 20
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model.eval()


@pytest.mark.parametrize("zoom", [0.5, 2.0])
def test_test_path_and_inference_give_the_same_metres(
    quickstart: tuple[Config, torch.nn.Module], zoom: float
) -> None:
    cfg, model = quickstart
    scale = (round(SIZE[1] * zoom), round(SIZE[0] * zoom))
    cfg.test_dataloader.dataset.pipeline = [
        dict(type="Resize", scale=scale),
        dict(type="PackMTLInputs"),
    ]
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    metric = METRICS.build(dict(cfg.test_evaluator, tasks=("depth",)))
    with torch.no_grad():
        data = model.data_preprocessor(pseudo_collate([dataset[0]]), False)
        sample = model(**data, mode="predict")[0]
    metric.process(data, [sample])
    raw = dataset.get_raw_sample(0)
    result = inference(InferenceModel(model, build_meta(cfg, model)), raw["img"])

    assert sample.img_shape == scale[::-1] and sample.pred_depth.shape == SIZE
    torch.testing.assert_close(
        sample.pred_depth.data[0], torch.from_numpy(result["depth"]), rtol=1e-4, atol=0
    )
    target = torch.from_numpy(raw["gt_depth_map"])
    assert torch.equal(sample.gt_depth.data[0], target)
    expected = summarize_depth([depth_sums(torch.from_numpy(result["depth"]), target, **CAPS)])
    metrics = metric.evaluate(1)
    for key, value in expected.items():
        assert metrics[f"depth/{key}"] == pytest.approx(value, rel=1e-4)


def test_inference_clamps_to_the_heads_caps_as_predict_does(
    quickstart: tuple[Config, torch.nn.Module],
) -> None:
    """Caps inside the range the model predicts: both paths clamp the same pixels alike."""
    cfg, model = quickstart
    cfg.test_dataloader.dataset.pipeline = [dict(type="PackMTLInputs")]
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    head = model.heads["depth"]
    data = model.data_preprocessor(pseudo_collate([dataset[0]]), False)
    with torch.no_grad():
        free = model(**data, mode="predict")[0].pred_depth.data[0]
    low, high = (float(q) for q in torch.quantile(free.flatten(), torch.tensor([0.25, 0.75])))
    saved = head.min_depth, head.max_depth
    head.min_depth, head.max_depth = low, high
    try:
        with torch.no_grad():
            capped = model(**data, mode="predict")[0].pred_depth.data[0]
        meta = build_meta(cfg, model)
        result = inference(InferenceModel(model, meta), dataset.get_raw_sample(0)["img"])
    finally:
        head.min_depth, head.max_depth = saved
    assert meta["depth"] == dict(min_depth=low, max_depth=high)
    assert float((capped == high).float().mean()) > 0.2  # the caps bite
    torch.testing.assert_close(torch.from_numpy(result["depth"]), capped, rtol=1e-4, atol=0)


def raw_sample(shape: tuple[int, int], depth: float) -> dict:
    """An image of constant true ``depth`` (m) with an invalid row and out-of-range pixels."""
    h, w = shape
    gt = np.full(shape, depth, dtype=np.float32)
    gt[0] = 0.0  # no measurement
    gt[1, : w // 2] = 1.2e5  # Cityscapes' smallest non-zero disparity: beyond max_depth
    gt[-1, : w // 2] = 1e-4  # below min_depth
    return {"img": np.zeros((h, w, 3), dtype=np.uint8), "gt_depth_map": gt}


@pytest.mark.parametrize("zoom", [0.5, 1.0, 4.0])
def test_prediction_of_1_1_times_the_target_at_any_test_zoom(zoom: float) -> None:
    """Two images through the test pipeline's Resize, at zooms s and 2s: the network, which
    sees depth / s, predicts 1.1 × that; abs_rel is 0.1 and abs_err 0.1 × the mean true depth
    of the pixels inside the caps, at the original size."""
    shapes, depths = ((24, 40), (12, 20)), (8.0, 30.0)
    resize = dict(type="Resize", scale=(round(40 * zoom), round(24 * zoom)))
    pipeline = build_pipeline([resize, dict(type="PackMTLInputs")])
    packed = []
    for shape, depth in zip(shapes, depths, strict=True):
        results = raw_sample(shape, depth)
        for transform in pipeline:
            results = transform(results)
        packed.append(results)
    data = DetDataPreprocessor(pad_size_divisor=32)(pseudo_collate(packed), False)
    samples: list[MTLDataSample] = data["data_samples"]
    zooms = [math.sqrt(math.prod(s.scale_factor)) for s in samples]
    assert zooms == pytest.approx([zoom, 2 * zoom])
    height, width = data["inputs"].shape[-2:]
    outputs = [1.1 * d / s for d, s in zip(depths, zooms, strict=True)]
    network = torch.stack([torch.full((1, height // 4, width // 4), v) for v in outputs])
    DepthHead(in_channels=4, channels=4, **CAPS).predict_by_feat(network, samples)
    metric = MultiTaskMetric(tasks=("depth",), **CAPS)
    metric.process(data, samples)
    metrics = metric.evaluate(len(samples))

    for sample, shape in zip(samples, shapes, strict=True):
        assert sample.gt_depth.shape == sample.pred_depth.shape == shape
        assert sample.gt_depth.data.max() > 1e5  # the original target, in metres
    counts = [(sh[0] - 1) * sh[1] - sh[1] // 2 * 2 for sh in shapes]
    mean = sum(c * d for c, d in zip(counts, depths, strict=True)) / sum(counts)
    mean_sq = sum(c * d**2 for c, d in zip(counts, depths, strict=True)) / sum(counts)
    assert metrics["depth/abs_rel"] == pytest.approx(0.1, rel=1e-5)
    assert metrics["depth/abs_err"] == pytest.approx(0.1 * mean, rel=1e-5)
    assert metrics["depth/rmse"] == pytest.approx(0.1 * math.sqrt(mean_sq), rel=1e-5)
    assert metrics["depth/delta1"] == 100.0


def test_head_clamps_predictions_but_not_what_the_loss_sees() -> None:
    head = DepthHead(in_channels=4, channels=4, min_depth=1.0, max_depth=5.0)
    sample = MTLDataSample(metainfo=dict(img_shape=(8, 8), batch_input_shape=(8, 8)))
    sample.gt_depth = PixelData(data=torch.full((1, 8, 8), 3.0))
    depth = torch.full((1, 1, 2, 2), 100.0)
    depth[..., 0, :] = 0.01
    head.predict_by_feat(depth, [sample])
    pred = sample.pred_depth.data
    assert pred.min() == 1.0 and pred.max() == 5.0
    # the loss compares the raw output: clamped, a prediction beyond the caps gets no gradient
    far = torch.full((1, 1, 2, 2), 100.0, requires_grad=True)
    head.loss_by_feat(far, [sample])["loss_depth"].backward()
    assert (far.grad > 0).all()


def test_head_rejects_bad_caps_and_a_target_off_the_image() -> None:
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        DepthHead(in_channels=4, channels=4, min_depth=10.0, max_depth=10.0)
    packed = build_pipeline([dict(type="Resize", scale=(8, 8)), dict(type="PackMTLInputs")])
    results = raw_sample((16, 16), 5.0)
    for transform in packed:
        results = transform(results)
    sample = results["data_samples"]
    sample.set_metainfo(dict(batch_input_shape=(8, 8)))
    with pytest.raises(ValueError, match="train with RandomResize"):
        DepthHead(in_channels=4, channels=4).loss_by_feat(torch.ones(1, 1, 2, 2), [sample])


def test_panel_draws_a_depth_map_at_the_original_size() -> None:
    """A test sample's depth (original size) over its resized image, as tools/test.py draws."""
    depth = np.linspace(1.0, 50.0, 16 * 32, dtype=np.float32).reshape(16, 32)
    style = dict(metainfo={}, tasks=("det", "seg", "depth", "normals"))
    panel = draw_sample({"img": np.zeros((8, 16, 3), np.uint8), "gt_depth_map": depth}, **style)
    assert panel.shape == (16, 32, 3)
