"""The peers of our gradient surgery, as their users would call them, behind our balancer's step.

``python tools/benchmark.py balancers --peers`` trains the same model, batch and initial
weights with these beside ours. Each peer is a ``GradientBalancer`` whose ``train_step`` does
what its library's documentation (TorchJD) or trainer (LibMTL) does, on the parameters more
than one task reaches (the *shared* ones: the set our surgery works on, handed to the peers
whole, since neither knows partial sharing); the task-private ones get their plain gradient.

- TorchJD 0.18 (``pip install torchjd==0.18.0``): ``autojac.backward`` of the T losses over the
  shared parameters (their Jacobians, batched with vmap, into ``.jac``), one ordinary backward
  of the summed losses over the private ones, then ``autojac.jac_to_grad`` with the
  aggregator (PCGrad, UPGrad or IMTL-G).
- LibMTL 1.1.5 (``pip install LibMTL==1.1.5``): its ``PCGrad.backward``, which runs one
  ``backward`` per task into ``.grad``, flattens the shared gradients into a T × P matrix,
  projects, and writes the sum back; the private parameters keep the accumulated gradients.

Neither is a dependency of the package: the benchmark imports them only when asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adperception.balancing.balancer import GradientBalancer
from adperception.balancing.task_gradients import HeadInputs

TORCHJD_AGGREGATORS = ("pcgrad", "upgrad", "imtlg")

# benchmark name -> model.balancer of a peer; built only when --peers is given
PEER_METHODS = {
    **{
        f"torchjd_{name}": dict(type="TorchJDBalancer", aggregator=name)
        for name in TORCHJD_AGGREGATORS
    },
    "libmtl_pcgrad": dict(type="LibMTLPCGrad"),
}


def peer_config(name: str) -> dict:
    """``model.balancer`` for the peer ``name``, its type resolved to the class here."""
    cfg = dict(PEER_METHODS[name])
    cfg["type"] = {"TorchJDBalancer": TorchJDBalancer, "LibMTLPCGrad": LibMTLPCGrad}[cfg["type"]]
    return cfg


class _PeerBalancer(GradientBalancer):
    """A peer's step; single process, fp32, equal task weights (the peers' defaults)."""

    def plan(self, model: nn.Module) -> str:
        # Traced here, before the step's forward, as our balancer traces: the tracing's own
        # loss pass restores buffers in place, which a graph already built would trip over.
        self.layout(model)
        return "weighted"  # the step is the peer's own; nothing of ours to plan

    def train_step(
        self,
        model: nn.Module,
        losses: dict[str, Tensor],
        optim_wrapper,
        kind: str,
        head_inputs: HeadInputs | None = None,
    ) -> dict[str, Tensor]:
        """The peer's backward from the losses, as its library takes them (no head inputs)."""
        # the parameters more than one task reaches (every sharing group's), and the rest
        layout = self.layout(model)
        shared = [p for group in layout.groups for p in group.params]
        private = [p for params in layout.private.values() for p in params]
        optim_wrapper.zero_grad()
        self.peer_backward([losses[f"loss_{t}"] for t in self.tasks], shared, private)
        optim_wrapper.apply_gradients()
        self.num_steps += 1
        return {}

    def peer_backward(self, losses: list[Tensor], shared: list[Tensor], private: list[Tensor]):
        raise NotImplementedError


class TorchJDBalancer(_PeerBalancer):
    """TorchJD's Jacobian descent: the shared parameters' T-row Jacobian, aggregated."""

    def __init__(self, tasks: Sequence[str], aggregator: str = "pcgrad", **kwargs) -> None:
        super().__init__(tasks, **kwargs)
        from torchjd import aggregation

        if aggregator not in TORCHJD_AGGREGATORS:
            raise ValueError(f"TorchJD aggregator must be one of {TORCHJD_AGGREGATORS}")
        self.peer = {
            "pcgrad": aggregation.PCGrad,
            "upgrad": aggregation.UPGrad,
            "imtlg": aggregation.IMTLG,
        }[aggregator]()

    def peer_backward(self, losses: list[Tensor], shared: list[Tensor], private: list[Tensor]):
        from torchjd.autojac import backward, jac_to_grad

        backward(losses, inputs=shared, retain_graph=True)
        torch.autograd.backward(torch.stack(losses).sum(), inputs=private)
        jacobian_bytes = sum(p.jac.numel() * p.jac.element_size() for p in shared)
        self.peak_task_gradient_bytes = max(self.peak_task_gradient_bytes, jacobian_bytes)
        jac_to_grad(shared, self.peer)


class LibMTLPCGrad(_PeerBalancer):
    """LibMTL's PCGrad, driven as its ``Trainer`` drives a weighting: ``backward(losses)``."""

    def peer_backward(self, losses: list[Tensor], shared: list[Tensor], private: list[Tensor]):
        weighting = _libmtl_weighting(shared, len(losses), losses[0].device)
        weighting.backward(losses)
        grads_bytes = len(losses) * weighting.grad_dim * torch.finfo(torch.float32).bits // 8
        self.peak_task_gradient_bytes = max(self.peak_task_gradient_bytes, grads_bytes)


def _import_libmtl_pcgrad():
    """LibMTL 1.1.5's PCGrad. Its package imports ``torchvision.models.utils``, which
    torchvision 0.13 removed (its ``load_state_dict_from_url`` moved to ``torch.hub``), so
    ``import LibMTL`` fails on any current torchvision; that one name is aliased first."""
    import sys
    import types

    if "torchvision.models.utils" not in sys.modules:
        import torchvision.models

        if not hasattr(torchvision.models, "utils"):
            alias = types.ModuleType("torchvision.models.utils")
            alias.load_state_dict_from_url = torch.hub.load_state_dict_from_url
            sys.modules["torchvision.models.utils"] = alias
    from LibMTL.weighting import PCGrad

    return PCGrad


def _libmtl_weighting(shared: list[Tensor], task_num: int, device: torch.device):
    """LibMTL's PCGrad with the attributes its ``Trainer`` gives the model it mixes into."""
    PCGrad = _import_libmtl_pcgrad()

    class SharedEncoderPCGrad(PCGrad):
        def __init__(self) -> None:
            super().__init__()
            self.task_num = task_num
            self.device = device
            self.rep_grad = False

        def get_share_params(self) -> list[Tensor]:
            return shared

        def zero_grad_share_params(self) -> None:
            for param in shared:
                if param.grad is not None:
                    param.grad.zero_()

    return SharedEncoderPCGrad()
