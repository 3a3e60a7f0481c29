"""The inference API: ``init_model(directory)`` and ``inference(model, images)``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adperception.data.visualize import draw_sample
from adperception.export.checkpoint import load_inference_model
from adperception.export.onnx import OnnxModel
from adperception.export.postprocess import Image, postprocess, prepare
from adperception.export.wrapper import InferenceModel
from adperception.tasks.base import get_task


def init_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """The exported model of ``directory`` in eval mode on ``device``; every file is checked
    against the manifest's sha256 and the weights load with safetensors (no unpickling)."""
    return load_inference_model(directory).to(device)


def inference(
    model: InferenceModel | OnnxModel, images: Image | Sequence[Image]
) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """Results per image (see ``postprocess``) at its original size; one image → one dict,
    a list → a list. ``images`` are file paths or uint8 H×W×3 RGB arrays of any size."""
    single = isinstance(images, (str, os.PathLike, np.ndarray))
    results = []
    if isinstance(model, nn.Module):
        device = next(model.parameters()).device
        pad_to = None
    else:
        device = torch.device("cpu")
        pad_to = model.input_shape
    for image in [images] if single else images:
        prepared = prepare(image, model.meta, pad_to=pad_to)
        img_shapes = torch.tensor([prepared.resized_shape], device=device)
        with torch.no_grad():
            outputs = model(prepared.batch.to(device), img_shapes)
        outputs = {name: value.cpu() for name, value in outputs.items()}
        results.append(postprocess(outputs, 0, prepared, model.meta))
    return results[0] if single else results


def draw_result(
    image: np.ndarray, result: Mapping[str, np.ndarray], meta: Mapping, *, score_thr: float = 0.3
) -> np.ndarray:
    """uint8 RGB panel of ``result`` over ``image`` (``adperception.data.visualize``), one tile
    per task of the model: boxes scoring at least ``score_thr`` with labels, class overlays,
    depth and normals."""
    sample: dict[str, np.ndarray] = {"img": image}
    for task in map(get_task, meta["tasks"]):
        sample.update(task.result_to_sample(result, score_thr=score_thr))
    return draw_sample(sample, metainfo=meta["metainfo"], tasks=meta["tasks"])


def load_exported(
    directory: str | os.PathLike, *, onnx: bool = False
) -> InferenceModel | OnnxModel:
    """The torch model of an exported directory, or with ``onnx`` its onnxruntime model."""
    return OnnxModel(Path(directory)) if onnx else init_model(directory)
