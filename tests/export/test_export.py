"""Exported inference checkpoints, the inference API, ONNX parity and the infer tool, on the
quickstart model (random initialisation) over tiny SynthDrive images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from safetensors.torch import load_file

from adperception.data.datasets import SynthDrive
from adperception.data.synth import generate_dataset
from adperception.engine import setup_runtime
from adperception.export import (
    OnnxModel,
    add_onnx,
    export_checkpoint,
    inference,
    init_model,
    output_names,
)
from adperception.export.checkpoint import load_weights
from adperception.export.postprocess import postprocess, prepare
from adperception.registry import MODELS, TRANSFORMS

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 128)  # (h, w) of the generated images and of the test scale: s = 1
VERSIONED = {"adperception", "torch", "mmengine", "mmdet", "mmseg", "timm"}
SQUARE = 128  # test scale (w = h) and so ONNX input side of the aspect-ratio tests
#: (h, w) of the aspect-ratio tests' images: two other aspect ratios and the export size.
ASPECTS = {"70x150": (70, 150), "300x100": (300, 100), "export-size": (SQUARE, SQUARE)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny quickstart config, its randomly initialised model saved as an mmengine checkpoint
    with optimizer and EMA entries, and that checkpoint exported by tools/export.py as ONNX."""
    setup_runtime()
    root = tmp_path_factory.mktemp("export")
    generate_dataset(root / "data", {"val": 2}, seed=5, height=SIZE[0], width=SIZE[1])
    config = root / "tiny.py"
    config.write_text(f"""
_base_ = [{str(ROOT / "configs/quickstart.py")!r}]
test_pipeline = [dict(type="Resize", scale=({SIZE[1]}, {SIZE[0]})), dict(type="PackMTLInputs")]
val_dataloader = dict(dataset=dict(data_root={str(root / "data")!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
# an untrained head's depth is arbitrary: no cap within its range, so that the resize test
# compares maps that the 80 m cap has not flattened
model = dict(heads=dict(depth=dict(max_depth=1e6)))
""")
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    state = model.state_dict()
    checkpoint = root / "iter_0.pth"
    torch.save(
        {
            "state_dict": state,
            "ema_state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []},
            "meta": {"iter": 0},
        },
        checkpoint,
    )
    out = root / "exported"
    proc = run_tool("tools/export.py", config, checkpoint, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset = SynthDrive(data_root=str(root / "data"), split="val", pipeline=[])
    images = [dataset.get_raw_sample(i)["img"] for i in range(2)]
    return dict(
        root=root,
        config=config,
        checkpoint=checkpoint,
        out=out,
        model=model,
        images=images,
        pipeline=cfg.test_dataloader.dataset.pipeline,
    )


@pytest.fixture(scope="module")
def square(setup: dict) -> dict:
    """The setup's checkpoint exported with ONNX under a SQUARE×SQUARE test scale, its torch and
    onnxruntime models, images of ASPECTS already at that scale (the test pipeline's Resize, so
    that inference's own resize leaves them as they are and its results are in predict's
    pixels), and predict on the three as one batch: padded as the ONNX input, SQUARE×SQUARE."""
    config = setup["root"] / "square.py"
    config.write_text(f"""
_base_ = [{str(setup["config"])!r}]
test_pipeline = [dict(type="Resize", scale=({SQUARE}, {SQUARE})), dict(type="PackMTLInputs")]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
""")
    cfg = Config.fromfile(config)
    out = export_checkpoint(cfg, setup["checkpoint"], setup["root"] / "square")
    add_onnx(out)
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = TRANSFORMS.build(pipeline[0])
    frame = setup["images"][0]
    images = [resize({"img": cv2.resize(frame, (w, h))})["img"] for h, w in ASPECTS.values()]
    assert [image.shape[:2] for image in images] == [(60, 128), (128, 43), (SQUARE, SQUARE)]
    return dict(
        torch=init_model(out),
        onnx=OnnxModel(out),
        pipeline=pipeline,
        images=images,
        batched=predict(setup["model"], images, pipeline),
    )


def run_tool(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env
    )


def predict(model: torch.nn.Module, images: list[np.ndarray], pipeline: list) -> list:
    """The training model's ``predict`` on ``images`` as one batch, as tools/test.py runs it: the
    test ``pipeline``, then the data preprocessor (normalise, pad to the batch's largest image
    and to a multiple of 32)."""
    transforms = [TRANSFORMS.build(step) for step in pipeline]
    packed = []
    for image in images:
        results = {"img": image}
        for transform in transforms:
            results = transform(results)
        packed.append(results)
    with torch.no_grad():
        data = model.data_preprocessor(pseudo_collate(packed), False)
        return model(**data, mode="predict")


def full_shapes(batch: torch.Tensor) -> torch.Tensor:
    """``img_shapes`` of a batch whose images fill it."""
    return torch.tensor([batch.shape[-2:]] * len(batch))


def assert_matches(result: dict, sample: object, rtol: float = 1e-3) -> None:
    """``inference``'s ``result`` against ``predict``'s ``sample`` for the same image: the same
    detections (``assert_same_detections``, scores and boxes within ``rtol`` of their largest
    magnitude), depth and normals within ``rtol`` of theirs, and the same segmentation on all
    but a fraction ``rtol`` of the pixels."""

    def close(name: str, actual: np.ndarray, expected: torch.Tensor) -> None:
        expected = expected.numpy()
        assert actual.shape == expected.shape, name
        error = np.abs(actual - expected).max() / np.abs(expected).max()
        assert error < rtol, f"{name}: max relative error {error:.2e}"

    instances = sample.pred_instances
    predicted = {
        "boxes": instances.bboxes.numpy(),
        "scores": instances.scores.numpy(),
        "labels": instances.labels.numpy(),
    }
    assert result["scores"].shape == predicted["scores"].shape
    tolerances = dict(
        score_atol=rtol * float(np.abs(predicted["scores"]).max()),
        box_atol=rtol * float(np.abs(predicted["boxes"]).max()),
    )
    assert_same_detections(result, predicted, **tolerances)
    assert_same_detections(predicted, result, **tolerances)
    seg = sample.pred_sem_seg.data[0].numpy()
    assert result["seg"].shape == seg.shape
    assert (result["seg"] != seg).mean() <= rtol
    close("depth", result["depth"], sample.pred_depth.data[0])
    close("normals", result["normals"], sample.pred_normals.data.permute(1, 2, 0))


def assert_same_detections(
    actual: dict, expected: dict, *, score_atol: float, box_atol: float
) -> None:
    """Every detection of ``expected`` scoring clear of its top-k cut (its lowest kept score)
    by more than ``2 × score_atol`` is in ``actual``: same label, score within ``score_atol``,
    box within ``box_atol`` px. Not compared: the order (an untrained detector's scores lie
    micro-units apart, and ties within float noise may swap) and the detections at the cut,
    which float noise may move in or out of the top k."""
    cut = expected["scores"].min()
    clear = np.flatnonzero(expected["scores"] > cut + 2 * score_atol)
    assert len(clear) > len(expected["scores"]) // 2, "too few detections clear of the cut"
    for k in clear:
        candidates = np.flatnonzero(
            (actual["labels"] == expected["labels"][k])
            & (np.abs(actual["scores"] - expected["scores"][k]) <= score_atol)
        )
        box_error = np.abs(actual["boxes"][candidates] - expected["boxes"][k]).max(
            axis=1, initial=0
        )
        assert len(candidates) and box_error.min() <= box_atol, (
            f"detection {k} (label {expected['labels'][k]}, score {expected['scores'][k]:.6f}, "
            f"box {expected['boxes'][k]}) has no counterpart"
        )


def test_directory_holds_weights_config_metadata_and_checksums(setup: dict) -> None:
    out = setup["out"]
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors", "config.json", "meta.json", "manifest.json", "model.onnx"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["versions"]) == VERSIONED
    assert manifest["versions"]["torch"] == torch.__version__
    assert set(manifest["sha256"]) == names - {"manifest.json"}
    weights = load_file(out / "model.safetensors")
    # exactly the network's weights: the optimizer, EMA and balancer entries are gone
    state = setup["model"].state_dict()
    assert weights.keys() == {k for k in state if not k.startswith("balancer.")}
    assert any(k.startswith("balancer.") for k in state)
    for key, value in weights.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metainfo"]["det_classes"] == list(SynthDrive.METAINFO["det_classes"])
    assert meta["metainfo"]["classes"] == list(SynthDrive.METAINFO["classes"])
    assert meta["outputs"].keys() == {"det_logits", "det_boxes", "seg_logits", "depth", "normals"}
    assert meta["normalisation"] == {  # EfficientNet-Lite's ImageNet inputs: [-1, 1]
        "mean": [127.5, 127.5, 127.5],
        "std": [127.5, 127.5, 127.5],
        "rgb": True,
    }
    assert meta["size"] == {"resize": [SIZE[1], SIZE[0]], "pad_size_divisor": 32, "pad_value": 0}
    assert meta["det"] == {"use_sigmoid": True, "num_classes": 8, "max_per_img": 100}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["backbone"]["model_name"] == "tf_efficientnet_lite0"


def test_damaged_weights_fail_naming_the_file(setup: dict, tmp_path: Path) -> None:
    for damage in ("flip", "truncate"):
        copy = shutil.copytree(setup["out"], tmp_path / damage)
        path = copy / "model.safetensors"
        data = bytearray(path.read_bytes())
        if damage == "flip":
            data[-1] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"model\.safetensors: sha256 does not match"):
            init_model(copy)
        if damage == "truncate":
            # without the manifest's check, safetensors itself rejects the file, naming it
            with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors"):
                load_weights(path)


def test_half_precision_halves_the_file_and_still_loads(setup: dict, tmp_path: Path) -> None:
    half = export_checkpoint(setup["config"], setup["checkpoint"], tmp_path / "half", half=True)
    ratio = (half / "model.safetensors").stat().st_size / (
        setup["out"] / "model.safetensors"
    ).stat().st_size
    assert 0.45 < ratio < 0.55
    assert json.loads((half / "manifest.json").read_text())["dtype"] == "float16"
    batch = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = init_model(setup["out"])(batch, full_shapes(batch))
        halved = init_model(half)(batch, full_shapes(batch))
    torch.testing.assert_close(halved["depth"], full["depth"], rtol=1e-2, atol=1e-2)


def test_inference_at_the_test_scale_equals_predict(setup: dict) -> None:
    model = init_model(setup["out"])
    assert not model.training
    zeros = torch.zeros(1, 3, *SIZE)
    tasks = ("det", "seg", "depth", "normals")
    assert list(model(zeros, full_shapes(zeros))) == output_names(tasks)
    results = inference(model, setup["images"])
    assert len(results) == 2
    for image, result in zip(setup["images"], results, strict=True):
        sample = predict(setup["model"], [image], setup["pipeline"])[0]
        expected = sample.pred_instances
        torch.testing.assert_close(torch.from_numpy(result["boxes"]), expected.bboxes)
        torch.testing.assert_close(torch.from_numpy(result["scores"]), expected.scores)
        assert result["labels"].tolist() == expected.labels.tolist()
        assert np.array_equal(result["seg"], sample.pred_sem_seg.data[0].numpy())
        torch.testing.assert_close(torch.from_numpy(result["depth"]), sample.pred_depth.data[0])
        normals = torch.from_numpy(result["normals"]).permute(2, 0, 1)
        torch.testing.assert_close(normals, sample.pred_normals.data)


def test_inference_undoes_the_test_resize(setup: dict) -> None:
    """A 2× larger image is resized by s = 0.5 to the test scale: boxes come back × 2, metric
    depth × 0.5, maps at the large image's size; checked against predict on the resized image."""
    model = init_model(setup["out"])
    small = setup["images"][0]
    large = cv2.resize(small, (2 * SIZE[1], 2 * SIZE[0]), interpolation=cv2.INTER_LINEAR)
    resized = TRANSFORMS.build(dict(type="Resize", scale=(SIZE[1], SIZE[0])))({"img": large})
    assert resized["scale_factor"] == (0.5, 0.5)
    sample = predict(setup["model"], [resized["img"]], setup["pipeline"])[0]
    result = inference(model, large)
    torch.testing.assert_close(torch.from_numpy(result["boxes"]), sample.pred_instances.bboxes * 2)
    torch.testing.assert_close(torch.from_numpy(result["scores"]), sample.pred_instances.scores)
    assert result["seg"].shape == result["depth"].shape == large.shape[:2]
    assert result["normals"].shape == large.shape
    np.testing.assert_allclose(np.linalg.norm(result["normals"], axis=-1), 1.0, rtol=1e-5)
    # the zoom undone (metric depth × 0.5 at zoom 0.5) and the map brought to the large size
    # by bilinear interpolation (pixel centres, as OpenCV's INTER_LINEAR)
    expected = cv2.resize(
        0.5 * sample.pred_depth.data[0].numpy(),
        (2 * SIZE[1], 2 * SIZE[0]),
        interpolation=cv2.INTER_LINEAR,
    )
    np.testing.assert_allclose(result["depth"], expected, rtol=1e-4)
    seg_small = result["seg"][1::2, 1::2]
    assert (seg_small == sample.pred_sem_seg.data[0].numpy()).mean() > 0.95
    # any size and aspect: maps at the input's size, boxes inside it
    odd = inference(model, large[:70, :150])
    assert odd["seg"].shape == odd["depth"].shape == (70, 150)
    assert (odd["boxes"][:, 0::2] <= 150).all() and (odd["boxes"][:, 1::2] <= 70).all()


def query_order_margin(model, image: np.ndarray) -> float:
    """The smallest gap between consecutive scores of the detector's two-stage selection (its
    best ``num_queries + 1`` encoder proposals) on ``image``, over the largest score. Where two
    proposals are a float rounding apart (1e-7 of the largest, seen on an untrained detector),
    PyTorch and onnxruntime may order them differently; each slot's learned content query then
    meets the other proposal and every detection changes, which is no export error."""
    detector = model.model.heads["det"].detector
    branch = detector.bbox_head.cls_branches[detector.decoder.num_layers]
    found: list[torch.Tensor] = []
    handle = branch.register_forward_hook(lambda _m, _i, out: found.append(out.detach()))
    try:
        inference(model, image)
    finally:
        handle.remove()
    scores = found[-1].max(-1).values.sort(dim=1, descending=True).values
    best = scores[:, : detector.num_queries + 1]
    return float((best[:, :-1] - best[:, 1:]).min() / best.abs().max())


def test_onnxruntime_matches_pytorch_with_a_dynamic_batch(setup: dict) -> None:
    model = init_model(setup["out"])
    session = OnnxModel(setup["out"])
    assert session.output_names == model.output_names
    assert session.input_shape == SIZE
    batch = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    img_shapes = torch.tensor([SIZE, (40, 100)])  # the second image is partly padding
    with torch.no_grad():
        expected = model(batch, img_shapes)
    actual = session(batch, img_shapes)
    for name, value in expected.items():
        assert actual[name].shape == value.shape
        relative = (actual[name] - value).abs().max() / value.abs().max()
        assert relative < 1e-4, f"{name}: max relative error {relative:.2e}"
    # the image on which the detector's query selection is clearest of float noise
    flips = [(slice(None), slice(None)), (slice(None), slice(None, None, -1))]
    flips += [(slice(None, None, -1), f[1]) for f in flips]
    candidates = [np.ascontiguousarray(i[f]) for i in setup["images"] for f in flips]
    margin, image = max(((query_order_margin(model, i), i) for i in candidates), key=lambda m: m[0])
    assert margin > 1e-5, f"every image has a near-tie in the query selection ({margin:.1e})"
    by_torch, by_onnx = inference(model, image), inference(session, image)
    # The raw logits may differ by 1e-4 of their largest magnitude, so a score (a sigmoid, slope
    # at most 1/4) by a quarter of that; a normalised (cx, cy, w, h) by 1e-4 (their largest is
    # about 1), so a corner (cx ± w/2) by 1.5e-4 of the image side.
    score_atol = 0.25e-4 * float(expected["det_logits"].abs().max())
    box_atol = 1.5e-4 * max(SIZE)
    assert_same_detections(by_onnx, by_torch, score_atol=score_atol, box_atol=box_atol)
    assert_same_detections(by_torch, by_onnx, score_atol=score_atol, box_atol=box_atol)
    assert (by_onnx["seg"] == by_torch["seg"]).mean() > 0.999
    np.testing.assert_allclose(by_onnx["depth"], by_torch["depth"], rtol=1e-4)
    np.testing.assert_allclose(by_onnx["normals"], by_torch["normals"], atol=1e-4)


@pytest.mark.parametrize("size", list(ASPECTS))
def test_inference_on_other_aspect_ratios_equals_predict(
    square: dict, setup: dict, size: str
) -> None:
    """PyTorch pads to a multiple of 32 and is compared with predict on the image alone; the
    ONNX graph pads to its fixed input and is compared with predict on the batch of all three,
    which pads each image to the same size. Without the padding mask the ONNX boxes of the two
    other aspect ratios are off by ~70 % of the largest coordinate."""
    index = list(ASPECTS).index(size)
    image = square["images"][index]
    alone = predict(setup["model"], [image], square["pipeline"])[0]
    assert_matches(inference(square["torch"], image), alone)
    assert_matches(inference(square["onnx"], image), square["batched"][index])


def test_a_dynamic_batch_of_mixed_sizes_equals_predict(square: dict) -> None:
    """The three images in one input, each with its img_shape, through the PyTorch wrapper and
    onnxruntime, against predict on the same batch."""
    meta = square["onnx"].meta
    prepared = [
        prepare(image, meta, pad_to=square["onnx"].input_shape) for image in square["images"]
    ]
    batch = torch.cat([item.batch for item in prepared])
    img_shapes = torch.tensor([item.resized_shape for item in prepared])
    for model in (square["torch"], square["onnx"]):
        with torch.no_grad():
            outputs = model(batch, img_shapes)
        for index, (item, sample) in enumerate(zip(prepared, square["batched"], strict=True)):
            assert_matches(postprocess(outputs, index, item, meta), sample)


def test_infer_tool_writes_one_panel_per_image(setup: dict, tmp_path: Path) -> None:
    paths = []
    for i, image in enumerate(setup["images"]):
        paths.append(tmp_path / f"frame{i}.png")
        cv2.imwrite(str(paths[-1]), image[..., ::-1])
    out_dir = tmp_path / "panels"
    proc = run_tool("tools/infer.py", setup["out"], *paths, "--out-dir", out_dir, "--onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    panels = sorted(out_dir.iterdir())
    assert [p.name for p in panels] == ["frame0.png", "frame1.png"]
    panel = cv2.imread(str(panels[0]))
    assert panel.shape == (2 * SIZE[0], 2 * SIZE[1], 3)
