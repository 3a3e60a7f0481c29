"""Hooks: the RNG state that makes a resumed run continue exactly, and prediction pictures."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from mmengine.hooks import Hook

from adperception.data.visualize import draw_sample, sample_stem
from adperception.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves torch's generator states in every checkpoint and restores them on resume.

    mmengine re-seeds at start-up and replays the dataloader up to the resumed iteration, which
    restores the data order and the augmentation draws (numpy, in the loader), but not the torch
    draws the model made while training (dropout, drop-path). The state is restored just before
    the first resumed iteration, after the replay: creating the dataloader iterator draws from
    torch's generator too, which the interrupted run did only once, at its start.
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._pending: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_state"] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_state")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if (
            cuda is not None
            and torch.cuda.is_available()
            and len(cuda) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda)


@HOOKS.register_module()
class PredictionPanelHook(Hook):
    """Writes, for the first ``num`` test images, a picture of the targets (top) above the
    model's predictions (bottom): boxes scoring at least ``score_thr``, the segmentation overlay,
    the depth colour map and the normals, drawn by ``adperception.data.visualize``."""

    def __init__(self, out_dir: str, num: int = 4, score_thr: float = 0.3) -> None:
        self.out_dir = out_dir
        self.num = num
        self.score_thr = score_thr
        self._written = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._written >= self.num or outputs is None:
            return
        meta = runner.test_dataloader.dataset.metainfo
        style = dict(
            seg_classes=meta["classes"],
            det_classes=meta.get("det_classes", ()),
            palette=meta["palette"],
        )
        os.makedirs(self.out_dir, exist_ok=True)
        for image, sample in zip(data_batch["inputs"], outputs, strict=True):
            if self._written >= self.num:
                return
            h, w = sample.img_shape
            img = image[:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            truth, predicted = {"img": img}, {"img": img}
            for field, key in (
                ("sem_seg", "gt_seg_map"),
                ("depth", "gt_depth_map"),
                ("normals", "gt_normals_map"),
            ):
                for prefix, target in (("gt", truth), ("pred", predicted)):
                    data = sample.get(f"{prefix}_{field}")
                    if data is not None:
                        array = data.data.cpu().numpy()
                        array = array[0] if field != "normals" else array.transpose(1, 2, 0)
                        target[key] = np.ascontiguousarray(array)
            if "gt_instances" in sample:
                truth["gt_bboxes"] = sample.gt_instances.bboxes.cpu().numpy()
                truth["gt_bboxes_labels"] = sample.gt_instances.labels.cpu().numpy()
            if "pred_instances" in sample:
                keep = sample.pred_instances.scores >= self.score_thr
                predicted["gt_bboxes"] = sample.pred_instances.bboxes[keep].cpu().numpy()
                predicted["gt_bboxes_labels"] = sample.pred_instances.labels[keep].cpu().numpy()
            panel = np.concatenate(
                [draw_sample(truth, **style), draw_sample(predicted, **style)], axis=0
            )
            path = os.path.join(self.out_dir, sample_stem(sample.img_path) + ".png")
            cv2.imwrite(path, panel[..., ::-1])
            self._written += 1
