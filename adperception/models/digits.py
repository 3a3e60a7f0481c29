"""A small two-task network for ``DigitsMTL`` (8×8) and ``MNISTMTL`` (28×28): one conv trunk
shared by both tasks, one linear head per task. Small enough that a whole balancer comparison
trains in minutes on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adperception.models.base import MultiTaskBaseModel
from adperception.registry import MODELS

#: Classes of each task.
NUM_CLASSES = {"digit": 10, "parity": 2}


@MODELS.register_module()
class DigitsMTLNet(MultiTaskBaseModel):
    """Digit and parity of square one-channel images, cross-entropy per task.

    The trunk (two 3×3 convs, 1 → 16 → 32 channels, the first at ``stem_stride``, the second at
    stride 2, then a linear layer to ``hidden`` features) feeds both heads, so every trunk
    parameter is shared by both tasks and every head parameter is private to its task. At
    ``hidden=64`` it has 37.6 k parameters for 8×8 digits and 105 k for 28×28 MNIST at
    ``stem_stride=2`` (7×7 features; 406 k and 5× the step time at stride 1).

    Args:
        image_size: the images' side in pixels.
        stem_stride: the first conv's stride.
        hidden: trunk output features.
        loss_scale: ``{task: factor}`` multiplying that task's loss (missing → 1), to make one
            task's loss dominate by construction.
        balancer: a ``model.balancer`` config (``adperception.balancing``); None → Escalation.

    ``loss`` returns ``loss_digit`` and ``loss_parity``; ``predict`` returns one dict per image
    with ``pred_<task>`` (the predicted class) and, when labels are given, ``gt_<task>``.
    """

    def __init__(
        self,
        *,
        image_size: int = 8,
        stem_stride: int = 1,
        hidden: int = 64,
        loss_scale: dict[str, float] | None = None,
        balancer: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.tasks = tuple(NUM_CLASSES)
        loss_scale = dict(loss_scale or {})
        unknown = sorted(set(loss_scale) - set(self.tasks))
        if unknown:
            raise ValueError(f"loss_scale: unknown task(s) {unknown}; tasks are {self.tasks}")
        self.loss_scale = {task: float(loss_scale.get(task, 1.0)) for task in self.tasks}
        self.image_size = image_size
        # A 3×3 conv with padding 1 at stride s maps a side of n pixels to (n - 1) // s + 1.
        # (8 → 8 → 4 for the digits, 28 → 14 → 7 for MNIST at stem_stride=2)
        side = (image_size - 1) // stem_stride // 2 + 1
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=stem_stride, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * side * side, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, n) for t, n in NUM_CLASSES.items()})
        self.init_balancer(balancer)

    def forward(
        self, inputs: Tensor, data_samples: dict[str, Tensor] | None = None, mode: str = "tensor"
    ):
        """mmengine's three modes: ``loss``, ``predict`` and ``tensor`` (logits per task)."""
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs, data_samples)
        if mode == "tensor":
            return self._forward(inputs)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', not {mode!r}")

    def _forward(self, inputs: Tensor) -> dict[str, Tensor]:
        features = self.trunk(inputs)
        return {task: head(features) for task, head in self.heads.items()}

    def loss(self, inputs: Tensor, data_samples: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self._forward(inputs)
        return {
            f"loss_{t}": self.loss_scale[t] * F.cross_entropy(logits[t], data_samples[t])
            for t in self.tasks
        }

    @torch.no_grad()
    def predict(
        self, inputs: Tensor, data_samples: dict[str, Tensor] | None = None
    ) -> list[dict[str, int]]:
        preds = {task: logits.argmax(1).tolist() for task, logits in self._forward(inputs).items()}
        results: list[dict[str, int]] = [{} for _ in range(len(inputs))]
        for task in self.tasks:
            labels = None if data_samples is None else data_samples[task].tolist()
            for i, result in enumerate(results):
                result[f"pred_{task}"] = preds[task][i]
                if labels is not None:
                    result[f"gt_{task}"] = labels[i]
        return results

    def probe_batch(self) -> tuple[Tensor, dict[str, Tensor]]:
        device = next(self.parameters()).device
        size = (2, 1, self.image_size, self.image_size)
        inputs = torch.rand(size, generator=torch.Generator().manual_seed(0)).to(device)
        labels = torch.tensor([0, 1], device=device)
        return inputs, {"digit": labels, "parity": labels}
