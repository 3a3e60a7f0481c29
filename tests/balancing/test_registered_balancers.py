"""Every registered balancer through the step driver: it trains, resumes exactly from its state
dict, and the new aggregators match a task-by-task reference; FAMO gives two DDP ranks the
update of one process that sees both batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.multiprocessing as mp

from adperception.balancing import functional
from adperception.registry import BALANCERS
from tests.balancing.models_for_tests import batch
from tests.balancing.test_balancer import assert_updates, make, reference_update, step_and_diff
from tests.balancing.test_distributed import STEPS, _worker, train
from tests.engine.test_tools import free_port

REQUIRED = {"StaticWeighting": dict(weights=dict(a=1.0, b=2.0, c=0.5))}


@pytest.mark.parametrize("name", sorted(BALANCERS.module_dict))
def test_every_balancer_trains_and_resumes_exactly(name: str) -> None:
    cfg = dict(type=name, **REQUIRED.get(name, {}))
    model, optim_wrapper = make(cfg)
    for step in range(3):
        logged = model.train_step(batch(step), optim_wrapper)
        assert all(torch.isfinite(v).all() for v in logged.values()), (name, logged)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    resumed, resumed_wrapper = make(cfg, seed=1)
    resumed.load_state_dict(copy.deepcopy(model.state_dict()))
    for step in range(3, 5):
        assert_updates(
            step_and_diff(resumed, resumed_wrapper, batch(step)),
            step_and_diff(model, optim_wrapper, batch(step)),
        )


@pytest.mark.parametrize(
    ("aggregator", "name"), [("FairGrad", "fairgrad"), ("AlignedMTL", "aligned_mtl")]
)
def test_new_aggregators_are_exact_per_sharing_group(aggregator: str, name: str) -> None:
    weighting = dict(type="StaticWeighting", weights=dict(a=1.0, b=2.0, c=0.5))
    model, optim_wrapper = make(dict(type=aggregator, weighting=weighting))
    data = batch(1)

    def aggregate(group, rows):
        return functional.AGGREGATORS[name](rows.double() @ rows.double().T).to(rows) @ rows

    expected = reference_update(model, data, torch.tensor([1.0, 2.0, 0.5]), aggregate)
    assert_updates(step_and_diff(model, optim_wrapper, data), expected)


def test_famo_gives_two_ranks_the_update_of_one_process(tmp_path) -> None:
    """FAMO weights from the rank-averaged losses: both ranks hold the same logits and apply the
    update of one process on the joint batch (weighted steps, through DDP's reducer)."""
    balancer = dict(type="FAMO")
    mp.spawn(_worker, args=(free_port(), balancer, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = train(balancer, ddp=False)
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert int(ranks[0]["balancer.num_steps"]) == STEPS
