"""tools/gpu_check.sh dry-run: every step of the GPU check on the CPU at toy sizes, so that the
script a GPU machine gets (issue 13) is known to run end to end and to write its JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_runs_every_step_and_writes_the_figures(
    gpu_check_dry_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    done, out = gpu_check_dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    names = ["environment", "gpu_tests", "balancers", "train_bf16", "inference"]
    assert list(record["steps"]) == names
    assert all(step["exit"] == 0 for step in record["steps"].values())
    assert record["environment"]["device"] == "cpu"
    # without CUDA every GPU-marked test is collected and skipped, none is left out
    tests = record["gpu_tests"]
    assert tests["tests"] == 4 and tests["skipped"] == 4 and tests["failures"] == 0
    assert {"equal", "pcgrad", "pcgrad_reference"} <= set(record["balancers"])
    train = record["train_bf16"]
    assert (train["config"], train["height"], train["width"]) == ("configs/ad_mtl.py", 128, 256)
    assert (train["amp"], train["steps"], train["skipped_steps"]) == (None, 1, 0)
    assert train["flops_per_step"] > 0 and train["mfu"] is None  # no known peak on a CPU
    assert {r["size"] for r in record["inference"]} == {"128x256"}
    ratio = (
        record["balancers"]["pcgrad"]["step_s"] / record["balancers"]["pcgrad_reference"]["step_s"]
    )
    assert record["goals"]["exact_pcgrad_over_reference"]["value"] == ratio
    assert set(record["goals"]) == {"exact_pcgrad_over_reference"}  # the bf16 ones need a GPU


def test_run_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "tools/gpu_check.sh"), "run", str(tmp_path / "gpu")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
