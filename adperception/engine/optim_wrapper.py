"""The optimizer step of every kind of training step: an optim wrapper that skips steps whose loss
is not finite and stops a run that keeps failing, and the constructor that keeps the balancer's
own parameters out of weight decay and gradient clipping."""

from __future__ import annotations

import warnings

import torch
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIMIZERS
from torch import nn

from adperception.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_consecutive_nonfinite`` skipped steps in a row."""


@OPTIM_WRAPPERS.register_module()
class MTLOptimWrapper(OptimWrapper):
    """``OptimWrapper`` with one path for every kind of training step, which skips a step whose
    loss is not finite and stops a run that keeps failing.

    - ``update_params(loss)``: the weighted step (backward, then ``apply_gradients``); a
      non-finite ``loss`` is a ``skip_step``.
    - ``apply_gradients()``: the step of gradients already in ``.grad`` (the balancer's per-task
      and amortised steps set them itself): optimizer step, zero grad, and the count of
      consecutive failures reset.
    - ``skip_step()``: nothing is applied; counted in ``skipped_steps`` and the message hub's
      ``nonfinite/steps``; ``NonFiniteLossError`` after ``max_consecutive_nonfinite`` in a row.

    The balancer agrees across ranks on whether a step is skipped, so every rank takes the same
    path. ``unclipped_params`` (set by ``MTLOptimWrapperConstructor``: the balancer's own
    parameters) are left out of gradient clipping.
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
        self.unclipped_params: frozenset[int] = frozenset()  # ids

    def update_params(self, loss: torch.Tensor, **kwargs) -> None:
        if not bool(torch.isfinite(loss).all()):
            self.skip_step()
            return
        super().update_params(loss, **kwargs)
        self._consecutive = 0

    def apply_gradients(self) -> None:
        """Step on the gradients in ``.grad``, then zero them."""
        self.step()
        self.zero_grad()
        self._consecutive = 0

    def skip_step(self) -> None:
        """Apply nothing this step; count it, and stop a run that keeps failing."""
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

    def _clip_grad(self) -> None:
        if not self.unclipped_params:
            super()._clip_grad()
            return
        params = [
            p
            for group in self.optimizer.param_groups
            for p in group["params"]
            if id(p) not in self.unclipped_params and p.requires_grad and p.grad is not None
        ]
        if params:
            grad = self.clip_func(params, **self.clip_grad_kwargs)
            if grad is not None:  # clip_grad_value_ returns None
                self.message_hub.update_scalar(f"train/{self.grad_name}", float(grad))


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


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MTLOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor, with the model's balancer parameters (uncertainty weighting's
    log-variances, GradNorm's weights) free of weight decay and left out of gradient clipping:
    decay would pull every log-variance towards weight ½ and clipping would let the network's
    gradient norm throttle them. Without a ``paramwise_cfg`` they form a second parameter group
    with ``weight_decay=0``; with one, ``custom_keys['balancer.']`` gets ``decay_mult=0``.

    Per-task optimizer groups are ``paramwise_cfg.custom_keys`` on the model's parameter names:
    ``heads.<task>`` (a head), ``necks.<group>`` and ``backbone.branches.<group>`` (a group's
    neck and backbone branch), each with its ``lr_mult`` / ``decay_mult``. A key that names no
    parameter gets a warning naming it (mmengine matches keys as substrings and silently ignores
    the rest, so a misspelt head would train at the base rate); not an error, since a config
    derived by deleting a head may keep that head's key.

    It also refuses ``accumulative_counts > 1`` with a balancer that sets gradients itself
    (surgery, measurement steps): those steps take each micro-batch's per-task gradients alone,
    so accumulating micro-batches would silently mix exact and partial updates.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        if paramwise_cfg and optim_wrapper_cfg["optimizer"].get("weight_decay") is not None:
            custom_keys = dict(paramwise_cfg.get("custom_keys", {}))
            custom_keys.setdefault("balancer.", dict(decay_mult=0.0))
            paramwise_cfg["custom_keys"] = custom_keys
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = model.module if hasattr(model, "module") else model
        balancer = getattr(module, "balancer", None)
        own = [] if balancer is None else [p for p in balancer.parameters() if p.requires_grad]
        self._check_accumulation(balancer)
        self._check_custom_keys(module)
        if own and not self.paramwise_cfg:
            optim_wrapper = self._two_groups(module, own)
        else:
            optim_wrapper = super().__call__(model)
        if balancer is not None and not isinstance(optim_wrapper, MTLOptimWrapper):
            raise TypeError(
                f"optim_wrapper.type is {type(optim_wrapper).__name__}; a model with a balancer "
                "needs MTLOptimWrapper or MTLAmpOptimWrapper (the step of per-task gradients "
                "and of skipped steps)"
            )
        optim_wrapper.unclipped_params = frozenset(id(p) for p in own)
        return optim_wrapper

    def _check_custom_keys(self, module: nn.Module) -> None:
        names = [name for name, _ in module.named_parameters()]
        unmatched = [
            key
            for key in self.paramwise_cfg.get("custom_keys", {})
            if key != "balancer." and not any(key in name for name in names)
        ]
        if unmatched:
            prefixes = sorted({".".join(name.split(".")[:2]) for name in names})
            warnings.warn(
                f"optim_wrapper.paramwise_cfg.custom_keys {unmatched} match no parameter of the "
                f"model and do nothing; its parameters are under {prefixes}",
                stacklevel=2,
            )

    def _check_accumulation(self, balancer: nn.Module | None) -> None:
        counts = self.optim_wrapper_cfg.get("accumulative_counts", 1)
        if counts > 1 and getattr(balancer, "takes_manual_steps", False):
            raise ValueError(
                f"optim_wrapper.accumulative_counts={counts} cannot be combined with "
                f"model.balancer {type(balancer).__name__}: its surgery and measurement steps "
                "set each micro-batch's gradients themselves, so micro-batches would not "
                "accumulate. Use a larger batch (or more GPUs) instead, or a plain weighting "
                "without measure_interval."
            )

    def _two_groups(self, module: nn.Module, own: list[nn.Parameter]) -> OptimWrapper:
        ids = {id(p) for p in own}
        others = [p for p in module.parameters() if id(p) not in ids]
        optimizer_cfg = dict(self.optimizer_cfg)
        optimizer_cfg["params"] = [dict(params=others), dict(params=own, weight_decay=0.0)]
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
