"""DINO with hybrid matching (H-DETR, Jia et al. 2023): one-to-many supervision in training only.

A one-to-one matched decoder gives each object a single positive query per step, which is what
makes DETR-family detectors slow to converge on a small budget. Hybrid matching adds a second
set of ``num_one2many`` queries, taken like the main ones from the top-scoring encoder proposals,
that are matched by the same Hungarian assigner to the ground truth repeated ``k_one2many`` times,
so each object has ``k`` positives there. The two sets share every weight but cannot attend to
each other (nor the denoising queries to the extra set), so the main queries compute exactly
what they would without it, and inference (main queries only, no duplicate removal needed) is
DINO's unchanged. The extra queries cost decoder time in training only.
"""

from __future__ import annotations

import torch
from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.models.detectors import DINO
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.structures import InstanceData
from torch import Tensor, nn


@MMDET_MODELS.register_module()
class HybridDINO(DINO):
    """mmdet's DINO plus H-DETR's one-to-many branch.

    Args:
        num_one2many: extra queries supervised one-to-many (0: plain DINO).
        k_one2many: how many times each ground-truth box is repeated for their matching.
        one2many_weight: weight of their losses (λ in H-DETR; 1 there).
    """

    def __init__(
        self,
        *args,
        num_one2many: int = 300,
        k_one2many: int = 6,
        one2many_weight: float = 1.0,
        **kwargs,
    ) -> None:
        if num_one2many < 0 or k_one2many < 1 or one2many_weight < 0:
            raise ValueError(
                "HybridDINO needs num_one2many >= 0, k_one2many >= 1 and one2many_weight >= 0, "
                f"got {num_one2many}, {k_one2many}, {one2many_weight}"
            )
        self.num_one2many = num_one2many  # read by _init_layers, which DINO's __init__ calls
        self.k_one2many = k_one2many
        self.one2many_weight = one2many_weight
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        # rows [0, num_queries): DINO's content queries; the rest: the one-to-many set
        self.query_embedding = nn.Embedding(self.num_queries + self.num_one2many, self.embed_dims)

    @property
    def num_selected(self) -> int:
        """Encoder proposals taken as queries: the one-to-many ones as well in training."""
        return self.num_queries + (self.num_one2many if self.training else 0)

    def pre_decoder(
        self,
        memory: Tensor,
        memory_mask: Tensor,
        spatial_shapes: Tensor,
        batch_data_samples: list | None = None,
    ) -> tuple[dict, dict]:
        """DINO's two-stage query selection, taking ``num_queries + num_one2many`` proposals in
        training, with the self-attention mask extended so that the one-to-many queries see
        only each other and no other query sees them."""
        batch = memory.shape[0]
        selected = self.num_selected
        head = self.bbox_head
        output_memory, output_proposals = self.gen_encoder_output_proposals(
            memory, memory_mask, spatial_shapes
        )
        enc_class = head.cls_branches[self.decoder.num_layers](output_memory)
        enc_coord_unact = head.reg_branches[self.decoder.num_layers](output_memory)
        enc_coord_unact = enc_coord_unact + output_proposals
        topk = torch.topk(enc_class.max(-1)[0], k=selected, dim=1)[1]
        topk_score = torch.gather(
            enc_class, 1, topk.unsqueeze(-1).repeat(1, 1, enc_class.shape[-1])
        )
        topk_coord_unact = torch.gather(enc_coord_unact, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        topk_coords = topk_coord_unact.sigmoid()
        topk_coord_unact = topk_coord_unact.detach()
        query = self.query_embedding.weight[:selected, None, :].repeat(1, batch, 1).transpose(0, 1)
        if not self.training:
            decoder_inputs = dict(
                query=query, memory=memory, reference_points=topk_coord_unact.sigmoid()
            )
            return dict(decoder_inputs, dn_mask=None), {}
        dn_label_query, dn_bbox_query, dn_mask, dn_meta = self.dn_query_generator(
            batch_data_samples
        )
        query = torch.cat([dn_label_query, query], dim=1)
        reference_points = torch.cat([dn_bbox_query, topk_coord_unact], dim=1).sigmoid()
        decoder_inputs = dict(
            query=query,
            memory=memory,
            reference_points=reference_points,
            dn_mask=self._with_one2many(dn_mask),
        )
        # DINO's encoder loss reads the main queries' proposals only
        head_inputs = dict(
            enc_outputs_class=topk_score[:, : self.num_queries],
            enc_outputs_coord=topk_coords[:, : self.num_queries],
            dn_meta=dn_meta,
        )
        return decoder_inputs, head_inputs

    def _with_one2many(self, dn_mask: Tensor) -> Tensor:
        """``dn_mask`` (True: cannot attend) over [denoising | main] grown by the one-to-many
        block: those queries attend to each other only, and nobody attends to them."""
        if self.num_one2many == 0:
            return dn_mask
        size = dn_mask.shape[0] + self.num_one2many
        mask = torch.ones(size, size, dtype=torch.bool, device=dn_mask.device)
        mask[: dn_mask.shape[0], : dn_mask.shape[0]] = dn_mask
        mask[dn_mask.shape[0] :, dn_mask.shape[0] :] = False
        return mask

    def loss(self, batch_inputs: Tensor, batch_data_samples: list) -> dict[str, Tensor]:
        """DINO's losses on the denoising and main queries, plus ``o2m.``-prefixed set losses of
        every decoder layer on the one-to-many queries against the repeated ground truth."""
        head_inputs = self.forward_transformer(self.extract_feat(batch_inputs), batch_data_samples)
        if self.num_one2many == 0:
            return self.bbox_head.loss(**head_inputs, batch_data_samples=batch_data_samples)
        split = head_inputs["hidden_states"].shape[2] - self.num_one2many
        hidden, references = head_inputs["hidden_states"], head_inputs["references"]
        head_inputs.update(
            hidden_states=hidden[:, :, :split], references=[r[:, :split] for r in references]
        )
        losses = self.bbox_head.loss(**head_inputs, batch_data_samples=batch_data_samples)
        cls_scores, bbox_preds = self.bbox_head(
            hidden[:, :, split:], [r[:, split:] for r in references]
        )
        repeated = [
            InstanceData.cat([sample.gt_instances] * self.k_one2many)
            for sample in batch_data_samples
        ]
        metas = [sample.metainfo for sample in batch_data_samples]
        # DETRHead's per-layer Hungarian set loss, as DINOHead uses for its main queries
        one2many = super(DeformableDETRHead, self.bbox_head).loss_by_feat(
            cls_scores, bbox_preds, repeated, metas
        )
        losses.update({f"o2m.{k}": v * self.one2many_weight for k, v in one2many.items()})
        return losses
