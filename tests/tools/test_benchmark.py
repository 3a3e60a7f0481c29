"""tools/benchmark.py inference: the four-task network against four single-task networks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]
TASKS = {"det", "seg", "depth", "normals"}


@pytest.fixture(scope="module")
def quick_run(
    gpu_check_dry_run: tuple[subprocess.CompletedProcess, Path],
) -> tuple[list[dict], str]:
    """The command line at the quickstart size, batch 1, one timed forward per model: the
    inference step of ``tools/gpu_check.sh dry-run`` (``inference --sizes quick --batches 1
    --iters 1 --json --markdown``)."""
    done, out = gpu_check_dry_run
    assert (out / "inference.json").exists(), done.stderr[-3000:]
    return json.loads((out / "inference.json").read_text()), (out / "inference.md").read_text()


def test_every_model_is_measured(quick_run: tuple[list[dict], str]) -> None:
    records, _ = quick_run
    keys = {"config", "tasks", "size", "batch", "latency_s", "images_per_s", "params"}
    keys |= {"peak_mem_mb", "device", "variant"}
    assert all(set(r) == keys for r in records)
    assert [r["config"] for r in records] == [
        "configs/quickstart.py",
        "configs/quickstart.py[det]",
        "configs/quickstart.py[seg]",
        "configs/quickstart.py[depth]",
        "configs/quickstart.py[normals]",
        "sum of single-task",
    ]
    assert set(records[0]["tasks"]) == TASKS
    assert [r["tasks"] for r in records[1:5]] == [["det"], ["seg"], ["depth"], ["normals"]]
    assert all(r["size"] == "128x256" and r["batch"] == 1 for r in records)
    assert all(r["latency_s"] > 0 and r["peak_mem_mb"] > 0 for r in records)


def test_sum_row_adds_up_and_the_trunk_is_shared(quick_run: tuple[list[dict], str]) -> None:
    records, _ = quick_run
    four, singles, total = records[0], records[1:5], records[5]
    assert math.isclose(total["latency_s"], sum(r["latency_s"] for r in singles))
    assert total["params"] == sum(r["params"] for r in singles)
    assert math.isclose(total["images_per_s"], 1 / total["latency_s"])
    # One backbone stem and shared stages instead of four: fewer parameters than the sum.
    assert four["params"] < total["params"]
    # ... but more than any single-task model, which holds a subset of its heads.
    assert all(four["params"] > r["params"] for r in singles)


def test_params_match_the_built_network(quick_run: tuple[list[dict], str]) -> None:
    from mmengine.config import Config

    from adperception.engine import setup_runtime
    from adperception.registry import MODELS

    setup_runtime()
    model = MODELS.build(Config.fromfile(str(ROOT / "configs/quickstart.py")).model)
    assert quick_run[0][0]["params"] == sum(p.numel() for p in model.parameters())


def test_markdown_has_one_row_per_record(quick_run: tuple[list[dict], str]) -> None:
    records, markdown = quick_run
    rows = [line for line in markdown.splitlines() if line.startswith("| 128×256")]
    assert len(rows) == len(records)
    assert "sum of single-task" in rows[-1]


@pytest.mark.parametrize("variant", ["fp32", "bf16", "bf16_channels_last"])
def test_variants_run_on_cpu(variant: str) -> None:
    """The --amp code path (bf16 autocast, channels-last) runs a real derived single-task net."""
    import torch

    bench = load_tool("benchmark")
    model = bench.build_inference_model(str(ROOT / "configs/quickstart.py"), "seg")
    assert list(model.heads) == ["seg"] and not model.training
    latency = bench.time_inference(
        model, batch=1, height=64, width=128, iters=1, warmup=0, variant=variant
    )
    assert latency > 0
    stem = next(p for p in model.parameters() if p.dim() == 4)
    assert stem.is_contiguous(memory_format=torch.channels_last) == (
        variant == "bf16_channels_last"
    )


def test_unknown_variant_and_task_are_named() -> None:
    bench = load_tool("benchmark")
    config = str(ROOT / "configs/quickstart.py")
    with pytest.raises(ValueError, match="quickstart.py: model.heads has no 'pose'"):
        bench.build_inference_model(config, "pose")
    model = bench.build_inference_model(config, "depth")
    with pytest.raises(ValueError, match="variant must be one of"):
        bench.time_inference(model, batch=1, height=64, width=128, iters=1, warmup=0, variant="x")


def test_sum_requires_each_task_once() -> None:
    bench = load_tool("benchmark")
    row = dict(size="128x256", batch=1, variant="fp32", latency_s=1.0, params=1, peak_mem_mb=1.0)
    row["device"] = "cpu"
    records = [dict(row, config=t, tasks=[t]) for t in ("det", "seg", "depth", "depth")]
    with pytest.raises(ValueError, match="not each of"):
        bench.sum_of_single_task(records, ("det", "seg", "depth", "normals"))


def test_balancers_reports_every_method_against_equal_weighting(tmp_path: Path) -> None:
    """The step-time comparison on the quickstart model: the JSON the issue names, the plain
    reference alongside, the amortised method timed over a whole cycle of 8 steps."""
    out = tmp_path / "balancers.json"
    command = [sys.executable, str(ROOT / "tools/benchmark.py"), "balancers", "--iters", "1"]
    command += ["--methods", "pcgrad", "pcgrad_k8", "pcgrad_reference", "--json", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=900)
    records = json.loads(out.read_text())
    assert list(records) == ["equal", "pcgrad", "pcgrad_k8", "pcgrad_reference"]
    assert all(r["step_s"] > 0 and r["step_cpu_s"] > 0 for r in records.values())
    assert records["equal"]["ratio_to_equal"] == records["equal"]["cpu_ratio_to_equal"] == 1.0
    for record in records.values():
        assert math.isclose(record["ratio_to_equal"], record["step_s"] / records["equal"]["step_s"])
        cpu = record["step_cpu_s"] / records["equal"]["step_cpu_s"]
        assert math.isclose(record["cpu_ratio_to_equal"], cpu)
    assert records["equal"]["task_grad_peak_mb"] is None
    # the reference holds every parameter's gradient per task, the grouped one only shared ones
    assert (
        0
        < records["pcgrad"]["task_grad_peak_mb"]
        < records["pcgrad_reference"]["task_grad_peak_mb"]
    )


def test_architectures_count_what_each_network_computes(tmp_path: Path) -> None:
    """At the quickstart crop: hard sharing computes every stage and the FPN once, cross-stitch
    a whole backbone and an FPN per group, so fewer multiply-accumulates; the counts of
    parameters are those of the built models."""
    configs = {
        "hard": "configs/experiments/architectures/hard_sharing.py",
        "stitch": "configs/experiments/architectures/cross_stitch.py",
    }
    command = [sys.executable, str(ROOT / "tools/benchmark.py"), "architectures", "--iters", "1"]
    command += ["--batch", "2", "--configs", *(f"{k}={v}" for k, v in configs.items())]
    command += ["--json", str(tmp_path / "a.json")]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=900)
    records = {r["architecture"]: r for r in json.loads((tmp_path / "a.json").read_text())}
    assert set(records) == set(configs)
    macs = {name: r["macs_per_image"] for name, r in records.items()}
    assert macs["hard"] < macs["stitch"]
    assert all((r["height"], r["width"]) == (128, 256) for r in records.values())
    assert all(
        r["train_step_s_median"] > 0 and r["inference_images_per_s"] > 0 for r in records.values()
    )
    bench = load_tool("benchmark")
    _, model, _ = bench._build_trainable(configs["hard"])
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert records["hard"]["trainable_params"] == expected


def test_peers_run_beside_ours_and_agree_where_the_method_is_the_same(tmp_path: Path) -> None:
    """TorchJD's and LibMTL's surgery on the same model and batch: two-task PCGrad is
    deterministic, so their first update must be ours; their per-task gradients span every
    shared parameter at once, ours one sharing group at a time."""
    out = tmp_path / "peers.json"
    command = [sys.executable, str(ROOT / "tools/benchmark.py"), "balancers", "--iters", "1"]
    command += ["--batch", "1", "--methods", "equal", "--json", str(out), "--peers"]
    command += ["torchjd_pcgrad", "torchjd_upgrad", "libmtl_pcgrad"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=900)
    records = json.loads(out.read_text())
    peers = ["torchjd_pcgrad", "torchjd_upgrad", "libmtl_pcgrad"]
    assert list(records) == ["equal", "pcgrad", *peers, "agreement"]
    agreement = dict(records["agreement"])
    assert -1 <= agreement.pop("task_cosine") < 0  # the tasks conflict: the projection acts
    assert set(agreement) == {"torchjd_pcgrad", "libmtl_pcgrad"}
    # the peers project in float32 (dot products over ~6 M coordinates), ours from a float64
    # Gram: 1.6e-5 apart here, ours within 1e-8 of a float64 reference
    assert all(0 <= error < 1e-4 for error in agreement.values())
    for name in peers:
        record = records[name]
        assert record["step_peak_mb"] > 0
        assert math.isclose(
            record["ours_step_ratio"], records["pcgrad"]["step_s"] / record["step_s"]
        )
        assert record["task_grad_peak_mb"] > records["pcgrad"]["task_grad_peak_mb"]
