"""ONNX export of ``InferenceModel`` and an onnxruntime model that ``inference`` accepts.

Exporter: torch 2.14's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), opset 17.
The dynamo exporter needs ``onnxscript``, which the pinned environment lacks; the TorchScript
exporter traces mmdet's DETR decoders (DINO's PyTorch deformable attention included) and the
timm backbones as they are. It writes ``Transpose`` nodes with negative ``perm`` entries for
``movedim(-1, 1)`` (the adapters), which onnxruntime rejects, so ``export_onnx`` rewrites them as
the equivalent non-negative axes.

Graph: inputs ``images`` B×3×H×W float32 (normalised as in ``meta.json``, each image padded
bottom/right; H and W fixed at export: the mmdet/mmseg upsampling sizes are traced as constants)
and, with a detection head, ``img_shapes`` B×2 int64, the (h, w) of each image inside its
padding, from which the graph builds the detector's padding mask as mmdet does in training and
``predict`` (an image of another aspect ratio fills part of the input: the decoder must not
attend to the rest, nor normalise its positional encoding over it). Batch axis dynamic.
Outputs, named as ``InferenceModel``'s keys for the tasks the model has (Q queries, K classes,
C seg classes):

    det_logits  B×Q×K        class logits (K + 1 with background for softmax DETR)
    det_boxes   B×Q×4        normalised (cx, cy, w, h)
    seg_logits  B×C×H/4×W/4  class logits
    depth       B×1×H/4×W/4  metres
    normals     B×3×H/4×W/4  unit vectors
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

from adperception.export.checkpoint import META, load_inference_model, verify, write_manifest
from adperception.export.wrapper import InferenceModel

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("images", "img_shapes")
OPSET = 17


def _positive_transpose_perms(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type != "Transpose":
            continue
        for attribute in node.attribute:
            if attribute.name == "perm":
                perm = list(attribute.ints)
                attribute.ints[:] = [axis % len(perm) for axis in perm]


def export_onnx(
    model: InferenceModel, path: str | os.PathLike, *, input_shape: tuple[int, int]
) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX for inputs B×3×``input_shape``; checked with
    ``onnx.checker``."""
    height, width = input_shape
    model = model.eval().cpu()
    example = (torch.zeros(1, 3, height, width), torch.tensor([[height, width]]))
    path = Path(path)
    dynamic = {name: {0: "batch"} for name in [*INPUT_NAMES, *model.output_names]}
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=model.output_names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    _positive_transpose_perms(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def default_input_shape(meta: dict) -> tuple[int, int]:
    """(H, W) of the test scale padded to the divisor: what a resized test image fits into."""
    if meta["size"]["resize"] is None:
        raise ValueError("the test pipeline does not resize; give the ONNX input shape")
    width, height = meta["size"]["resize"]
    divisor = meta["size"]["pad_size_divisor"]
    return (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)


def add_onnx(directory: str | os.PathLike, *, input_shape: tuple[int, int] | None = None) -> Path:
    """Export the model of an exported ``directory`` to ``directory/model.onnx`` and add the file
    to the manifest; ``input_shape`` (H, W) defaults to ``default_input_shape``."""
    directory = Path(directory)
    manifest = verify(directory)
    model = load_inference_model(directory)
    path = export_onnx(
        model, directory / ONNX_FILE, input_shape=input_shape or default_input_shape(model.meta)
    )
    files = sorted({*manifest["sha256"], ONNX_FILE})
    write_manifest(directory, files, manifest["dtype"])
    return path


class OnnxModel:
    """onnxruntime session of an exported directory's ``model.onnx`` with the call signature of
    ``InferenceModel``: ``model(batch, img_shapes)`` → {output name: tensor}; ``meta`` as
    ``meta.json``; ``input_shape`` the graph's fixed (H, W)."""

    def __init__(self, directory: str | os.PathLike, providers: list[str] | None = None) -> None:
        directory = Path(directory)
        manifest = verify(directory)
        path = directory / ONNX_FILE
        if ONNX_FILE not in manifest["sha256"]:
            raise FileNotFoundError(f"{path}: not part of this export")
        self.meta = json.loads((directory / META).read_text())
        self.session = ort.InferenceSession(
            str(path), providers=providers or ["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        # The exporter drops an input nothing reads: img_shapes is there with a detection head.
        self.input_names = [graph_input.name for graph_input in inputs]
        self.output_names = [output.name for output in self.session.get_outputs()]
        if "det_logits" in self.output_names and INPUT_NAMES[1] not in self.input_names:
            raise ValueError(
                f"{path}: detection outputs but no {INPUT_NAMES[1]!r} input (exported before "
                "the padding mask); export it again with tools/export.py"
            )
        height, width = inputs[0].shape[2:]
        self.input_shape = (int(height), int(width))

    def __call__(self, batch: Tensor, img_shapes: Tensor) -> dict[str, Tensor]:
        arrays = {
            INPUT_NAMES[0]: np.ascontiguousarray(batch.detach().cpu().numpy(), np.float32),
            INPUT_NAMES[1]: np.ascontiguousarray(img_shapes.detach().cpu().numpy(), np.int64),
        }
        feeds = {name: arrays[name] for name in self.input_names}
        outputs = self.session.run(self.output_names, feeds)
        return {
            name: torch.from_numpy(value)
            for name, value in zip(self.output_names, outputs, strict=True)
        }
