"""Gradient surgery under DDP: two gloo processes apply the identical update, and it equals one
process that sees both ranks' batches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adperception.engine import shutdown_dist
from adperception.engine.ddp import MTLDistributedDataParallel
from adperception.engine.optim_wrapper import MTLOptimWrapper
from tests.balancing.models_for_tests import BranchedRegressor, batch
from tests.engine.test_tools import free_port

STEPS = 4


def rank_batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    return batch(100 * step + rank, size=6)


def train(balancer: dict, ddp: bool, rank: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BranchedRegressor(balancer)
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    wrapper = MTLDistributedDataParallel(module=model) if ddp else None
    for step in range(STEPS):
        if ddp:
            data = rank_batch(step, rank)
        else:  # both ranks' batches in one
            parts = [rank_batch(step, r) for r in range(2)]
            data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if wrapper is not None:
            wrapper.train_step(data, optim_wrapper)
        else:
            model.train_step(data, optim_wrapper)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, balancer: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(train(balancer, ddp=True, rank=rank), f"{out}/rank{rank}.pt")
    finally:
        shutdown_dist()


@pytest.mark.parametrize(
    "balancer",
    [
        dict(type="PCGrad", weighting=dict(type="UncertaintyWeighting")),  # surgery every step
        dict(type="MGDA", surgery_interval=2),  # surgery, then DDP's reducer with its weights
    ],
    ids=["pcgrad_uw", "mgda_k2"],
)
def test_two_ranks_apply_identical_updates_equal_to_one_process(balancer, tmp_path) -> None:
    mp.spawn(_worker, args=(free_port(), balancer, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = train(balancer, ddp=False)
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert int(ranks[0]["balancer.num_steps"]) == STEPS
