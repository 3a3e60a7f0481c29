"""Deployment: self-contained inference checkpoints (safetensors + JSON), the inference API,
ONNX export and onnxruntime inference sharing the same pre- and post-processing."""

from adperception.export.api import draw_result, inference, init_model, load_exported
from adperception.export.checkpoint import export_checkpoint, verify
from adperception.export.onnx import OnnxModel, add_onnx, export_onnx
from adperception.export.wrapper import InferenceModel, output_names, output_specs

__all__ = [
    "InferenceModel",
    "OnnxModel",
    "add_onnx",
    "draw_result",
    "export_checkpoint",
    "export_onnx",
    "inference",
    "init_model",
    "load_exported",
    "output_names",
    "output_specs",
    "verify",
]
