"""tools/run_experiment.py: the methods tables of the digits configs, and a tiny comparison (two
methods, one seed, 20 iterations) down to its Markdown report and pictures."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from adperception.engine.experiment import load_methods

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs/experiments/digits.py"
BALANCER_TYPES = {
    "EqualWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "DWA",
    "GradNorm",
    "TrendWeighting",
    "PCGrad",
    "CAGrad",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "Escalation",
    "FAMO",
    "RLW",
    "LogLossWeighting",
    "FairGrad",
    "AlignedMTL",
}


def test_every_balancer_is_compared_and_the_variant_rescales_static_weights() -> None:
    plain = load_methods(Config.fromfile(DIGITS), None)
    assert {b["type"] for b in plain.values()} == BALANCER_TYPES
    assert plain["pcgrad_k8"] == dict(type="PCGrad", surgery_interval=8, measure_interval=10)
    imbalanced = Config.fromfile(ROOT / "configs/experiments/digits_imbalanced.py")
    assert imbalanced.model.loss_scale == dict(parity=100.0)
    methods = load_methods(imbalanced, None)
    assert list(methods) == list(plain)
    assert methods["StaticWeighting"]["weights"] == dict(digit=0.43, parity=0.0144)
    with pytest.raises(ValueError, match="unknown method"):
        load_methods(imbalanced, ["PCGrad", "Adam"])


def cells(report: str, method: str) -> list[str]:
    (row,) = [line for line in report.splitlines() if line.startswith(f"| {method} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_tiny_run_writes_a_table_and_pictures(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "digits.md"
    command = [sys.executable, str(ROOT / "tools/run_experiment.py"), str(DIGITS)]
    command += ["--methods", "EqualWeighting", "PCGrad", "--seeds", "1", "--iters", "20"]
    command += ["--work-dir", str(tmp_path / "runs"), "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = out.read_text()
    assert "| method | digit/accuracy | parity/accuracy | final weights (digit, parity) |" in report
    for method in ("EqualWeighting", "PCGrad"):
        _, digit, parity, weights, conflict, ms = cells(report, method)
        numbers = [float(digit), float(parity), *map(float, weights.split(",")), float(conflict)]
        assert all(math.isfinite(x) for x in [*numbers, float(ms)])
        assert 0 < float(digit) <= 100 and 0 < float(parity) <= 100 and float(ms) > 0
    assert cells(report, "EqualWeighting")[3] == "1, 1"
    links = re.findall(r"!\[\w+\]\(([^)]+)\)", report)
    assert {Path(link).name for link in links} >= {"losses.png", "weights.png", "conflict.png"}
    assert all((out.parent / link).is_file() for link in links)
    assert all("EqualWeighting_seed0" in link for link in links)  # Escalation was not run
    assert (tmp_path / "runs/digits/PCGrad/seed0").is_dir()
