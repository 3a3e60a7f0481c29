"""The DDP wrapper whose training step is the model's own, so the balancer can run under it."""

from __future__ import annotations

from mmengine.model import MMDistributedDataParallel

from adperception.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class MTLDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper, handing ``train_step`` to a model that takes the wrapper.

    mmengine's wrapper does forward, ``parse_losses`` and one ``update_params`` itself, which
    leaves no room for per-task backward passes. A model with ``train_step(data, optim_wrapper,
    ddp=...)`` (``MultiTaskBaseModel``) runs its step with this wrapper's forward, and bypasses
    the reducer (``no_sync``) on the steps whose gradients it averages itself; any other model
    trains as under mmengine's wrapper.
    """

    def train_step(self, data, optim_wrapper):
        if getattr(self.module, "supports_ddp_train_step", False):
            return self.module.train_step(data, optim_wrapper, ddp=self)
        return super().train_step(data, optim_wrapper)
