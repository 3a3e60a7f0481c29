"""An optim wrapper that skips steps whose loss is not finite and stops a run that keeps failing."""

from __future__ import annotations

import torch
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from adperception.registry import OPTIM_WRAPPERS


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_consecutive_nonfinite`` skipped steps in a row."""


@OPTIM_WRAPPERS.register_module()
class MTLOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``update_params`` skips a step with a non-finite loss.

    The model's ``parse_losses`` names the task at fault and agrees across ranks, so every rank
    skips the same steps. ``skipped_steps`` and the message hub's ``nonfinite/steps`` count them.
    """

    amp_variant = "MTLAmpOptimWrapper"  # what ``--amp`` switches to

    def __init__(self, *args, max_consecutive_nonfinite: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_skipping(max_consecutive_nonfinite)

    def _init_skipping(self, max_consecutive_nonfinite: int) -> None:
        if max_consecutive_nonfinite < 1:
            raise ValueError("max_consecutive_nonfinite must be >= 1")
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped_steps = 0
        self._consecutive = 0

    def update_params(self, loss: torch.Tensor, **kwargs) -> None:
        if torch.isfinite(loss).all():
            self._consecutive = 0
            super().update_params(loss, **kwargs)
            return
        self.zero_grad()
        self.skipped_steps += 1
        self._consecutive += 1
        hub = MessageHub.get_current_instance()
        hub.update_info("nonfinite/steps", hub.get_info("nonfinite/steps", 0) + 1)
        if self._consecutive >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self._consecutive} consecutive steps had a non-finite loss (the warnings above "
                "name the tasks); stopping. Lower the learning rate, check the data with "
                "tools/check_dataset.py, or raise optim_wrapper.max_consecutive_nonfinite."
            )


@OPTIM_WRAPPERS.register_module()
class MTLAmpOptimWrapper(MTLOptimWrapper, AmpOptimWrapper):
    """The same skipping on top of mmengine's AMP wrapper: one GradScaler over all task losses
    (the balancer scales each task's loss with it), which itself skips steps whose gradients
    overflow.

    mmengine's wrapper refuses to exist without an accelerator; on a CPU-only machine this one
    builds torch's CPU GradScaler instead, so mixed precision (bfloat16 autocast by default,
    ``dtype='float16'`` with loss scaling) and its overflow handling run, and are tested, there.
    """

    def __init__(
        self,
        *args,
        loss_scale: str | float | dict = "dynamic",
        dtype=None,
        max_consecutive_nonfinite: int = 10,
        **kwargs,
    ) -> None:
        if torch.cuda.is_available():
            super().__init__(
                *args,
                loss_scale=loss_scale,
                dtype=dtype,
                max_consecutive_nonfinite=max_consecutive_nonfinite,
                **kwargs,
            )
            return
        OptimWrapper.__init__(self, *args, **kwargs)
        self._init_skipping(max_consecutive_nonfinite)
        self._scale_update_param = None
        if loss_scale == "dynamic":
            scaler_kwargs = {}
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            scaler_kwargs = dict(init_scale=loss_scale)
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
        else:
            raise TypeError(f"loss_scale must be 'dynamic', a float or a dict, got {loss_scale!r}")
        self.loss_scaler = torch.amp.GradScaler("cpu", **scaler_kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
