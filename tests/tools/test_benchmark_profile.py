"""tools/benchmark.py profile: a training step against its parts, each measured alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adperception.data.synth import generate_dataset
from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]


def _profile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/benchmark.py"), "profile", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quickstart's step on three generated 128×256 training frames, batch 1, two measured
    batches after the warm-up."""
    root = tmp_path_factory.mktemp("synthdrive")
    generate_dataset(root, {"train": 3}, seed=0, height=128, width=256)
    out = root / "profile.json"
    done = _profile(
        "--config", "configs/quickstart.py", "--batch", "1", "--iters", "2",
        "--data-root", str(root), "--top", "6", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step ÷ parts" in done.stderr
    return json.loads(out.read_text())


def test_every_part_of_the_quickstart_is_measured(record: dict) -> None:
    from mmengine.config import Config

    from adperception.engine import setup_runtime
    from adperception.registry import MODELS

    setup_runtime()
    model = MODELS.build(Config.fromfile(str(ROOT / "configs/quickstart.py")).model)
    expected = {"preprocess", "backbone", "optimizer"}
    expected |= {f"neck.{group}" for group in model.necks}
    expected |= {f"head.{task}" for task in model.tasks}
    assert set(record["parts_s"]) == expected
    assert all(s > 0 for s in record["parts_s"].values())
    assert (record["batch"], record["height"], record["width"]) == (1, 128, 256)
    assert record["balancer"] == "Escalation" and record["load_s"] > 0


def test_the_ratio_is_the_step_over_the_sum_of_its_parts(record: dict) -> None:
    assert math.isclose(record["sum_of_parts_s"], sum(record["parts_s"].values()))
    assert math.isclose(record["step_over_parts"], record["step_s"] / record["sum_of_parts_s"])


def test_the_detectors_pieces_fit_inside_its_head(record: dict) -> None:
    inner = record["within_parts_s"]
    assert set(inner) == {"det.encoder_forward", "det.decoder_forward", "det.matching"}
    assert all(s > 0 for s in inner.values())
    # medians of the same batches: each piece, and their sum, is part of the head's time
    assert sum(inner.values()) < record["parts_s"]["head.det"]


def test_the_costliest_operators_come_first(record: dict) -> None:
    ops = record["top_ops"]
    assert len(ops) == 6
    costs = [op["self_cpu_ms"] for op in ops]
    assert costs == sorted(costs, reverse=True) and costs[-1] > 0
    assert all(0 < op["share"] <= 1 and op["calls"] >= 1 for op in ops)
    assert sum(op["share"] for op in ops) <= 1 + 1e-9


def test_missing_training_data_is_a_clear_error(tmp_path: Path) -> None:
    done = _profile("--iters", "1", "--data-root", str(tmp_path / "absent"))
    assert done.returncode != 0
    assert "make data" in done.stderr and "Traceback" not in done.stderr


def test_timers_leave_modules_and_methods_as_they_were() -> None:
    profile = load_tool("benchmark_profile")
    watch = profile.Stopwatch()
    layer = nn.Linear(2, 2)

    class Counter:
        def assign(self, x: int) -> int:
            return x + 1

    counter = Counter()
    with profile.timed_forwards(watch, {"layer": layer}):
        with profile.timed_calls(watch, "assign", counter, "assign"):
            layer(torch.ones(1, 2))
            layer(torch.ones(1, 2))
            assert counter.assign(1) == 2
    watch.end_batch()
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert "assign" not in vars(counter) and counter.assign(2) == 3
    assert set(watch.seconds) == {"layer", "assign"}
    # one entry per batch, however often the label was timed in it
    assert [len(v) for v in watch.seconds.values()] == [1, 1]
