"""Hooks: the RNG state that makes a resumed run continue exactly, and prediction pictures."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from adperception.data.visualize import draw_sample, sample_stem
from adperception.registry import HOOKS
from adperception.tasks.base import get_task


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
    model's predictions (bottom), one tile per task of the model drawn by its task (boxes
    scoring at least ``score_thr``), by ``adperception.data.visualize``."""

    def __init__(self, out_dir: str, num: int = 4, score_thr: float = 0.3) -> None:
        self.out_dir = out_dir
        self.num = num
        self.score_thr = score_thr
        self._written = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._written >= self.num or outputs is None:
            return
        meta = runner.test_dataloader.dataset.metainfo
        tasks = (runner.model.module if is_model_wrapper(runner.model) else runner.model).tasks
        os.makedirs(self.out_dir, exist_ok=True)
        for image, sample in zip(data_batch["inputs"], outputs, strict=True):
            if self._written >= self.num:
                return
            h, w = sample.img_shape
            img = image[:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            truth, predicted = {"img": img}, {"img": img}
            for task in map(get_task, tasks):
                if task.gt_field in sample:
                    truth.update(task.unpack(sample.get(task.gt_field)))
                if task.pred_field in sample:
                    element = sample.get(task.pred_field)
                    predicted.update(task.unpack(element, score_thr=self.score_thr))
            panel = np.concatenate(
                [
                    draw_sample(truth, metainfo=meta, tasks=tasks),
                    draw_sample(predicted, metainfo=meta, tasks=tasks),
                ],
                axis=0,
            )
            path = os.path.join(self.out_dir, sample_stem(sample.img_path) + ".png")
            cv2.imwrite(path, panel[..., ::-1])
            self._written += 1
