"""Hooks the training tests load through ``custom_imports``: a crash at a chosen iteration, as a
power cut or a pre-empted cluster job would cause, and a per-rank dump of the final weights."""

import os

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from adperception.registry import HOOKS


@HOOKS.register_module()
class CrashAfterIterHook(Hook):
    priority = "LOWEST"  # after CheckpointHook has saved

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iteration:
            os._exit(3)


@HOOKS.register_module()
class DumpWeightsHook(Hook):
    """Saves every rank's weights to ``{work_dir}/rank{r}.pth`` when training ends."""

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        path = os.path.join(runner.work_dir, f"rank{runner.rank}.pth")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
