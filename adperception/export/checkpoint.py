"""The exported inference checkpoint: a directory that loads without unpickling anything.

Files:
    ``model.safetensors``  the MultiTaskModel's state_dict (fp32 or, with ``half``, fp16); no
                           optimizer, EMA copy, balancer state or any other entry of the
                           training checkpoint;
    ``config.json``        the resolved mmengine config (``cfg.to_dict()``), to rebuild the model;
    ``meta.json``          what inference needs around the network: tasks, output names, class
                           names and palette, normalisation, size policy, per-task post-processing;
    ``manifest.json``      library versions and the sha256 of every other file of the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import mmdet
import mmengine
import mmseg
import safetensors.torch
import timm
import torch
from mmengine.config import Config
from safetensors import SafetensorError

import adperception
from adperception.engine import check_state_dict_fits, read_checkpoint, setup_runtime
from adperception.export.wrapper import InferenceModel, output_specs
from adperception.models.multitask import MultiTaskModel
from adperception.registry import DATASETS, MODELS
from adperception.tasks.base import get_task

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "meta.json"
MANIFEST = "manifest.json"
#: 2: ``meta.json`` keyed by task (``metainfo``, ``det``, ``depth``), from the task registry.
FORMAT_VERSION = 2


def _to_json(value: object) -> object:
    """Config values JSON lacks: a class or function given as ``type`` becomes its dotted path."""
    if isinstance(value, type) or callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-safe")


def config_to_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2, default=_to_json)


def _find_resize(pipeline: list) -> list[int] | None:
    """The (w, h) ``scale`` of the test pipeline's Resize, None when it does not resize."""
    for step in pipeline:
        if step.get("type") == "Resize":
            return [int(v) for v in step["scale"]]
    return None


def build_meta(cfg: Config, model: MultiTaskModel) -> dict:
    """Everything ``inference`` needs besides the weights, read from the config and the model.

    Class names come from the test dataset class's ``METAINFO``, without reading any data.
    """
    dataset_cfg = cfg.test_dataloader.dataset
    dataset_type = dataset_cfg["type"]
    dataset_cls = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
    if dataset_cls is None:
        raise ValueError(f"test_dataloader.dataset.type {dataset_type!r} is not registered")
    metainfo = {**dataset_cls.METAINFO, **dataset_cfg.get("metainfo", {})}
    preprocessor = cfg.model.data_preprocessor
    tasks = [get_task(name) for name in model.tasks]
    meta = {
        "tasks": list(model.tasks),
        "outputs": output_specs(model.tasks),
        # The metainfo the pictures need: each task's class names, and the dataset's palette.
        "metainfo": {
            **{task.class_key: list(task.classes(metainfo)) for task in tasks if task.class_key},
            "palette": [list(map(int, colour)) for colour in metainfo.get("palette", ())],
        },
        "normalisation": {
            "mean": [float(v) for v in preprocessor["mean"]],
            "std": [float(v) for v in preprocessor["std"]],
            # The datasets decode RGB; the preprocessor would swap channels only with bgr_to_rgb.
            "rgb": not preprocessor.get("bgr_to_rgb", False),
        },
        "size": {
            "resize": _find_resize(dataset_cfg["pipeline"]),
            "pad_size_divisor": int(preprocessor.get("pad_size_divisor", 1)),
            "pad_value": float(preprocessor.get("pad_value", 0)),
        },
    }
    for task in tasks:
        task_meta = task.export_meta(model.heads[task.name])
        if task_meta is not None:
            meta[task.name] = task_meta
    return meta


def build_model(model_cfg: Mapping) -> MultiTaskModel:
    """The MultiTaskModel of ``model_cfg``, without loading any pretrained backbone file."""
    setup_runtime()
    cfg = Config(dict(model=model_cfg)).model
    if "pretrained" in cfg.backbone:
        cfg.backbone.pretrained = None
    cfg.balancer = dict(type="EqualWeighting")  # inference balances nothing
    return MODELS.build(cfg)


def network_state_dict(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    """The model's state without the balancer's, which only training needs."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("balancer.")}


def read_training_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmengine checkpoint, loaded with ``weights_only=True``; a
    missing or damaged file is a ``CheckpointError`` naming it."""
    setup_runtime()
    checkpoint = read_checkpoint(os.fspath(path))
    return dict(checkpoint.get("state_dict", checkpoint))


def model_state_dict(
    model: MultiTaskModel, state_dict: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Exactly the model's own entries of ``state_dict`` (optimizer, EMA and other extra keys are
    left out, and so is the balancer's training state); a missing or misshapen entry is a
    ``CheckpointError`` naming ``source`` and the first such keys with their shapes."""
    expected = network_state_dict(model)
    check_state_dict_fits(expected, state_dict, checkpoint=source, allow_unexpected=True)
    return {key: state_dict[key] for key in expected}


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    return {
        "adperception": adperception.__version__,
        "torch": torch.__version__,
        "mmengine": mmengine.__version__,
        "mmdet": mmdet.__version__,
        "mmseg": mmseg.__version__,
        "timm": timm.__version__,
    }


def write_manifest(out_dir: str | os.PathLike, files: list[str], dtype: str) -> None:
    """(Re)write ``manifest.json`` with the sha256 of ``files`` (names inside ``out_dir``)."""
    out = Path(out_dir)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "versions": versions(),
        "sha256": {name: sha256(out / name) for name in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export_checkpoint(
    config: str | os.PathLike | Config,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    half: bool = False,
) -> Path:
    """Write the inference directory of an mmengine training ``checkpoint`` of ``config``."""
    setup_runtime()
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    model = build_model(cfg.model)
    weights = model_state_dict(model, read_training_state_dict(checkpoint), str(checkpoint))
    dtype = torch.float16 if half else torch.float32
    tensors = {
        key: (value.to(dtype) if value.is_floating_point() else value).contiguous().clone()
        for key, value in weights.items()
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    (out / CONFIG).write_text(config_to_json(cfg) + "\n")
    (out / META).write_text(json.dumps(build_meta(cfg, model), indent=2) + "\n")
    write_manifest(out, [WEIGHTS, CONFIG, META], str(dtype).removeprefix("torch."))
    return out


def verify(out_dir: str | os.PathLike) -> dict:
    """The manifest of ``out_dir`` after checking every listed file's sha256."""
    out = Path(out_dir)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest; not an exported checkpoint")
    manifest = json.loads(manifest_path.read_text())
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path}: export format {found}, this version reads {FORMAT_VERSION}; "
            "export the training checkpoint again with tools/export.py"
        )
    for name, digest in manifest["sha256"].items():
        path = out / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {MANIFEST} but missing")
        if sha256(path) != digest:
            raise ValueError(
                f"{path}: sha256 does not match {manifest_path}; the file is truncated, "
                "modified or from another export"
            )
    return manifest


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged file is an error naming it."""
    try:
        return safetensors.torch.load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def read_exported(out_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, config dict, meta) of a verified exported directory."""
    out = Path(out_dir)
    verify(out)
    config = json.loads((out / CONFIG).read_text())
    meta = json.loads((out / META).read_text())
    return load_weights(out / WEIGHTS), config, meta


def load_inference_model(out_dir: str | os.PathLike) -> InferenceModel:
    """The verified exported model of ``out_dir`` on the CPU, in eval mode."""
    weights, config, meta = read_exported(out_dir)
    model = build_model(Config(config).model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) != set(model.state_dict()) - set(network_state_dict(model)):
        raise ValueError(f"{out_dir}: weights do not match the model: {unexpected or missing}")
    return InferenceModel(model, meta).eval()
