"""Find every problem of a dataset on disk in one pass, before a training run trips on one.

The readers stop at a sample's first bad file; the checker reads every file of every sample with
the same decoding functions, and adds what a reader tolerates but a dataset should not have:
files without an image, instance ids of classes that have no instances, normals maps without a
valid pixel, splits without files. BDD100K's labels are partial by design (sem_seg covers 10K
images, not all of them in the 100K set), so there a missing label file is no problem, but a
drivable or lane mask without its image is, and so is every bad frame of the det json.

``implausible_view`` adds warnings, not errors, for frames that decode fine but that no driving
camera would see (one instance filling the view, almost no valid depth): a real dataset may hold
a few such frames, so they are worth a look but do not fail the check; in a generated one they
point at the scene sampler.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.labels import id2label
from mmengine.config import Config

from adperception.data import bdd100k_format, formats
from adperception.data.datasets import bdd100k, cityscapes, nyuv2
from adperception.data.datasets.bdd100k import BDD100KMTL
from adperception.data.datasets.cityscapes import CityscapesMTL
from adperception.data.datasets.nyuv2 import NYUv2MTL
from adperception.data.formats import DataFileError
from adperception.registry import DATASETS
from adperception.tasks.base import layout_files

LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
# A car 8 m ahead covers ~7 % of a Cityscapes frame and a bus beside the ego car ~30 %: an
# instance over half of the image is the camera inside or against it.
MAX_INSTANCE_SHARE = 0.5
# Cityscapes' disparity is valid on most pixels except the sky and the ego hood.
MIN_VALID_DEPTH_SHARE = 0.1


@dataclass(frozen=True)
class Problem:
    """One problem with one file or folder (which may be one that should exist and does not)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class SampleFiles:
    """One sample's files: those that exist, and those its split says it should have."""

    layout: str
    files: dict[str, str]
    missing: dict[str, str]
    #: ``(json path, frame)`` of the sample's frame in a split-wide label file (BDD100K's det
    #: json), whose boxes are checked against the image.
    frame: tuple[str, bdd100k.DetFrame] | None = None


def dataset_cfgs(source: str, splits: Sequence[str] | None = None) -> list[dict]:
    """Dataset configs (``type``, ``data_root``, ``split``, ``pipeline``) named by ``source``.

    ``source`` is an mmengine config (its train/val/test dataloaders' datasets, unwrapped from
    dataset wrappers, each once) or a dataset root whose layout is detected (every split on
    disk). ``splits`` keeps only those splits.
    """
    if os.path.isfile(source):
        cfg = Config.fromfile(source)
        found = []
        for loader in LOADERS:
            dataset = cfg.get(loader, None) and cfg[loader].get("dataset", None)
            while dataset is not None and "dataset" in dataset:
                dataset = dataset["dataset"]
            if dataset is None:
                continue
            cls = DATASETS.get(dataset["type"])
            if cls is None:
                raise DataFileError(f"{source}: unknown dataset type {dataset['type']!r}")
            defaults = inspect.signature(cls).parameters
            found.append(
                dict(
                    type=dataset["type"],
                    data_root=dataset.get("data_root", defaults["data_root"].default),
                    split=dataset.get("split", defaults["split"].default),
                    pipeline=list(dataset.get("pipeline", [])),
                )
            )
    elif os.path.isdir(source):
        dataset_type, available = _detect_layout(source)
        found = [
            dict(type=dataset_type, data_root=source, split=split, pipeline=[])
            for split in available
        ]
    else:
        raise DataFileError(f"{source}: neither a config file nor a dataset folder")
    unique = {(d["type"], os.path.normpath(d["data_root"]), d["split"]): d for d in found}
    chosen = [d for d in unique.values() if splits is None or d["split"] in splits]
    if not chosen:
        raise DataFileError(f"{source}: no dataset of split(s) {list(splits or [])}")
    return chosen


def _detect_layout(root: str) -> tuple[str, list[str]]:
    """``('BDD100KMTL', 'CityscapesMTL' or 'NYUv2MTL', splits on disk)`` of a dataset root."""
    if os.path.isdir(os.path.join(root, bdd100k.IMAGE_DIR)):
        return "BDD100KMTL", _bdd100k_splits(root)
    if os.path.isdir(os.path.join(root, formats.FOLDERS[formats.IMAGE_SUFFIX])):
        folders = {os.path.join(root, folder) for folder in cityscapes.folders().values()}
        splits = {
            split
            for folder in folders
            if os.path.isdir(folder)
            for split in os.listdir(folder)
            if os.path.isdir(os.path.join(folder, split))
        }
        return "CityscapesMTL", sorted(splits)
    splits = {
        split
        for split in os.listdir(root)
        if any(os.path.isdir(os.path.join(root, split, f)) for f in nyuv2.KINDS.values())
    }
    if splits:
        return "NYUv2MTL", sorted(splits)
    raise DataFileError(
        f"{root}: neither the Cityscapes layout (leftImg8bit/...), the BDD100K layout "
        "(images/100k/...) nor the NYUv2 layout ({split}/image/...)"
    )


def _bdd100k_splits(root: str) -> list[str]:
    """Splits of the image folder, the drivable and lane masks and the det jsons; not of the
    sem_seg masks, which belong to the 10K images (see ``bdd100k``)."""
    folders = [
        bdd100k.IMAGE_DIR,
        bdd100k.MASK_DIRS["drivable_path"],
        bdd100k.MASK_DIRS["lane_path"],
    ]
    splits = {
        split
        for folder in folders
        if os.path.isdir(os.path.join(root, folder))
        for split in os.listdir(os.path.join(root, folder))
        if os.path.isdir(os.path.join(root, folder, split))
    }
    det_dir = os.path.join(root, bdd100k.DET_DIR)
    if os.path.isdir(det_dir):
        splits |= {
            name[len("det_") : -len(".json")]
            for name in os.listdir(det_dir)
            if name.startswith("det_") and name.endswith(".json")
        }
    return sorted(splits)


def collect_samples(
    source: str, splits: Sequence[str] | None = None
) -> tuple[list[SampleFiles], list[Problem]]:
    """Every sample of ``source`` (see ``dataset_cfgs``) that has any file, image or not, and a
    problem for each split without any file (e.g. an empty ``leftImg8bit/test``)."""
    samples, problems = [], []
    for cfg in dataset_cfgs(source, splits):
        cls = DATASETS.get(cfg["type"])
        root, split = cfg["data_root"], cfg["split"]
        if issubclass(cls, NYUv2MTL):
            found = nyuv2.scan_split(root, split)
            folders = [os.path.join(root, split)]
            kinds = {key for files in found.values() for key in files} | {"img_path"}
            for i, files in found.items():
                missing = {
                    key: os.path.join(root, split, nyuv2.KINDS[key], f"{i}.npy")
                    for key in kinds - files.keys()
                }
                samples.append(SampleFiles("nyuv2", files, missing))
        elif issubclass(cls, CityscapesMTL):
            found = cityscapes.scan_split(root, split)
            folders = [
                os.path.join(root, folder, split) for folder in cityscapes.folders().values()
            ]
            kinds = {key for files in found.values() for key in files} | {"img_path"}
            for (city, stem), files in found.items():
                expected = kinds | ({"camera_path"} if "disparity_path" in files else set())
                missing = {
                    key: cityscapes.sample_path(root, split, city, stem, cityscapes.kinds()[key])
                    for key in expected - files.keys()
                }
                samples.append(SampleFiles("cityscapes", files, missing))
        elif issubclass(cls, BDD100KMTL):
            found, folders, found_problems = _collect_bdd100k(root, split, samples)
            problems.extend(found_problems)
        else:
            raise DataFileError(f"{source}: no checker for dataset type {cfg['type']}")
        if not found:
            existing = [folder for folder in dict.fromkeys(folders) if os.path.isdir(folder)]
            state = "has no files of the dataset's layout" if existing else "is missing"
            problems.append(Problem((existing or folders)[0], f"split '{split}' folder {state}"))
    return samples, problems


def _collect_bdd100k(
    root: str, split: str, samples: list[SampleFiles]
) -> tuple[dict, list[str], list[Problem]]:
    """Append the samples of one BDD100K split to ``samples``: each image, and each drivable or
    lane mask without one; ``(files found, the split's folders, the det json's problems)``."""
    image_dir, det_path, mask_dirs = bdd100k.split_paths(root, split)
    found = bdd100k.scan_split(root, split)
    frames: dict[str, bdd100k.DetFrame] = {}
    problems = []
    if os.path.isdir(image_dir) and os.path.exists(det_path):
        errors: list[DataFileError] = []
        try:
            frames = bdd100k.read_det_frames(det_path, image_dir, errors)
        except DataFileError as err:
            errors.append(err)
        problems = [_problem(det_path, err) for err in errors]
    for stem, files in found.items():
        if "img_path" in files:
            frame = frames.get(files["img_path"])
            samples.append(
                SampleFiles("bdd100k", files, {}, None if frame is None else (det_path, frame))
            )
        elif files.keys() - {"seg_path"}:
            missing = {"img_path": os.path.join(image_dir, stem + ".jpg")}
            samples.append(SampleFiles("bdd100k", files, missing))
    return found, [image_dir, *mask_dirs.values()], problems


def check_sample(sample: SampleFiles) -> list[Problem]:
    """All problems of one sample, at most one per file (and one for its det json frame)."""
    if "img_path" in sample.missing:
        present = ", ".join(sorted(sample.files.values()))
        return [Problem(sample.missing["img_path"], f"image is missing, but {present} exist(s)")]
    problems = []
    for key, path in sorted(sample.missing.items()):
        if key == "camera_path" and "disparity_path" in sample.files:
            problems.append(Problem(path, f"missing: {sample.files['disparity_path']} needs it"))
        else:
            problems.append(Problem(path, "missing, while other samples of the split have one"))
    readers = _CHECKS[sample.layout]
    if sample.layout == "cityscapes":
        readers = {**readers, **{key: file.read for key, (_, file) in layout_files().items()}}
    image_path = sample.files["img_path"]
    shape = None
    if os.path.getsize(image_path) == 0:
        problems.append(Problem(image_path, "empty file (0 bytes)"))
    else:
        try:
            shape = readers["img_path"](image_path).shape[:2]
        except DataFileError as err:
            problems.append(_problem(image_path, err))
    for key, path in sorted(sample.files.items()):
        if key == "img_path":
            continue
        if os.path.getsize(path) == 0:
            problems.append(Problem(path, "empty file (0 bytes)"))
            continue
        try:
            readers[key](path, shape)
        except DataFileError as err:
            problems.append(_problem(path, err))
    if sample.frame is not None and shape is not None:
        det_path, frame = sample.frame
        try:
            bdd100k.det_targets(det_path, frame, shape)
        except DataFileError as err:
            problems.append(_problem(det_path, err))
    return problems


def check_dataset(source: str, splits: Sequence[str] | None = None) -> list[Problem]:
    """All problems of a dataset root or of the datasets of an mmengine config."""
    samples, problems = collect_samples(source, splits)
    return problems + [p for sample in samples for p in check_sample(sample)]


def largest_instance(instance_ids: np.ndarray) -> tuple[int, float]:
    """The instanceIds value (>= 1000) with the most pixels and its share of the image; (0, 0.0)
    without instances. Crowd and stuff regions (< 1000) are no single object and do not count."""
    values, counts = np.unique(
        instance_ids[instance_ids >= formats.INSTANCE_OFFSET], return_counts=True
    )
    if len(values) == 0:
        return 0, 0.0
    k = int(counts.argmax())
    return int(values[k]), float(counts[k] / instance_ids.size)


def implausible_view(sample: SampleFiles) -> list[Problem]:
    """Warnings naming the image of a Cityscapes-layout frame whose largest instance covers more
    than ``MAX_INSTANCE_SHARE`` of it, or whose disparity is valid on less than
    ``MIN_VALID_DEPTH_SHARE``. Call it on a sample without problems (see ``check_sample``)."""
    if sample.layout != "cityscapes":
        return []  # indoors, one wall filling the view is an ordinary frame
    image = sample.files["img_path"]
    warnings = []
    if "instance_ids_path" in sample.files:
        value, share = largest_instance(
            cityscapes.read_instance_ids(sample.files["instance_ids_path"], None)
        )
        if share > MAX_INSTANCE_SHARE:
            name = id2label[value // formats.INSTANCE_OFFSET].name
            warnings.append(
                Problem(
                    image,
                    f"implausible view: one {name} (instance {value}) covers {share:.1%} of the "
                    f"image (more than {MAX_INSTANCE_SHARE:.0%})",
                )
            )
    if "disparity_path" in sample.files:
        valid = float((cityscapes.read_disparity(sample.files["disparity_path"], None) > 0).mean())
        if valid < MIN_VALID_DEPTH_SHARE:
            warnings.append(
                Problem(
                    image,
                    f"implausible view: disparity is valid on {valid:.1%} of the pixels "
                    f"(less than {MIN_VALID_DEPTH_SHARE:.0%})",
                )
            )
    return warnings


def _problem(path: str, err: DataFileError) -> Problem:
    message = str(err)
    prefix = f"{path}: "
    return Problem(path, message[len(prefix) :] if message.startswith(prefix) else message)


def _check_instance_ids(path: str, shape: tuple[int, int] | None) -> None:
    instance_ids = cityscapes.read_instance_ids(path, shape)
    values = np.unique(instance_ids)
    stuff = values[values < formats.INSTANCE_OFFSET]
    classes = np.unique(values[values >= formats.INSTANCE_OFFSET] // formats.INSTANCE_OFFSET)
    unknown = [int(v) for v in stuff if int(v) not in id2label]
    if unknown:
        raise DataFileError(f"{path}: label ids {unknown} are not in cityscapesscripts")
    no_instances = [
        int(c) for c in classes if int(c) not in id2label or not id2label[int(c)].hasInstances
    ]
    if no_instances:
        raise DataFileError(
            f"{path}: instance ids (>= 1000) of class ids {no_instances}, which have no instances"
        )


def _check_normals(path: str, shape: tuple[int, int] | None) -> None:
    if not cityscapes.read_normals(path, shape).any():
        raise DataFileError(f"{path}: no valid normals (every pixel is (0, 0, 0), marking invalid)")


_CITYSCAPES_CHECKS: dict[str, Callable] = {
    "img_path": cityscapes.read_image,
    "label_ids_path": cityscapes.read_label_ids,
    "instance_ids_path": _check_instance_ids,
    "disparity_path": cityscapes.read_disparity,
    "camera_path": lambda path, shape: cityscapes.read_camera(path),
    "normals_path": _check_normals,
}
_NYUV2_CHECKS: dict[str, Callable] = {
    "img_path": nyuv2.read_image,
    "label_path": nyuv2.read_label,
    "depth_path": nyuv2.read_depth,
    "normal_path": nyuv2.read_normals,
}
_BDD100K_CHECKS: dict[str, Callable] = {
    "img_path": bdd100k.read_image,
    "drivable_path": bdd100k_format.read_drivable_mask,
    "lane_path": bdd100k_format.read_lane_mask,
    "seg_path": bdd100k.read_seg_mask,
}
_CHECKS = {"cityscapes": _CITYSCAPES_CHECKS, "nyuv2": _NYUV2_CHECKS, "bdd100k": _BDD100K_CHECKS}
