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


class PartlyLabelledRegressor(BranchedRegressor):
    """The regressor on targets where NaN marks a task not labelled in this batch."""

    def labelled_tasks(self, data: dict) -> list[str]:
        targets = data["data_samples"]
        return [t for i, t in enumerate(self.tasks) if not bool(targets[:, i].isnan().all())]

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        labelled = self.labelled_tasks({"data_samples": targets})
        return {k: v for k, v in super().loss(inputs, targets).items() if k[5:] in labelled}


def partial_batch(step: int, rank: int) -> dict[str, torch.Tensor]:
    """At step 1, task c is labelled on rank 0 only, so the ranks agree to leave it out."""
    data = rank_batch(step, rank)
    if step == 1 and rank == 1:
        data["data_samples"][:, 2] = torch.nan
    return data


def train_partly_labelled(ddp: bool, rank: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = PartlyLabelledRegressor(
        dict(type="PCGrad", weighting=dict(type="UncertaintyWeighting"))
    )
    optim_wrapper = MTLOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
    wrapper = MTLDistributedDataParallel(module=model, find_unused_parameters=True) if ddp else None
    heads_c = []
    for step in range(STEPS):
        if ddp:
            data = partial_batch(step, rank)
        else:  # both ranks' batches in one, c left out at step 1 as the ranks agree to
            parts = [rank_batch(step, r) for r in range(2)]
            data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            if step == 1:
                data["data_samples"][:, 2] = torch.nan
        heads_c.append(model.heads["c"].weight.detach().clone())
        (wrapper or model).train_step(data, optim_wrapper)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["c_unchanged_at_step_1"] = torch.tensor(bool(torch.equal(heads_c[1], heads_c[2])))
    return state


def _partial_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(train_partly_labelled(ddp=True, rank=rank), f"{out}/rank{rank}.pt")
    finally:
        shutdown_dist()


def test_ranks_agree_to_leave_out_a_task_one_of_them_lacks(tmp_path) -> None:
    """Both ranks take the same partial step (no hang, identical updates), task c's head is
    left untouched on it, and the run equals one process whose step lacks c."""
    mp.spawn(_partial_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = train_partly_labelled(ddp=False)
    assert bool(single["c_unchanged_at_step_1"]) and bool(ranks[0]["c_unchanged_at_step_1"])
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
