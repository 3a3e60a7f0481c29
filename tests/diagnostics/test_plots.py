"""Reading mmengine's scalar logs and drawing them (``adperception.diagnostics.plots`` and
``tools/analyze_logs.py``) on logs written here: four tasks in three sharing groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from adperception.diagnostics.plots import (
    Series,
    Switch,
    diagnostic_groups,
    escalation_switches,
    find_scalars,
    read_scalars,
    with_prefix,
    write_plots,
)
from tests.tools_for_tests import load_tool

TASKS = ("det", "seg", "depth", "normals")
GROUPS = {
    "det+seg+depth+normals": TASKS,
    "det+seg": ("det", "seg"),
    "depth+normals": ("depth", "normals"),
}
PICTURES = ["losses.png", "weights.png", "grad_norms.png", "cosine.png", "conflict.png"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train_line(step: int) -> dict:
    """A LoggerHook line: total and per-task losses, per-task weights, lr, iter."""
    losses = {t: (i + 1) * math.exp(-step / (100 * (i + 1))) for i, t in enumerate(TASKS)}
    line = {"lr": 1e-3, "loss": sum(losses.values())}
    line.update({f"loss_{t}": v for t, v in losses.items()})
    line.update({f"weight_{t}": 1.0 + 0.1 * i * step / 200 for i, t in enumerate(TASKS)})
    return {**line, "time": 0.5, "iter": step, "step": step}


def diag_line(step: int) -> dict:
    """A GradientDiagnosticsHook line; cosines drift from agreement into conflict."""
    line: dict = {}
    for g, (group, tasks) in enumerate(GROUPS.items()):
        for i, t in enumerate(tasks):
            line[f"diag/{group}/grad_norm/{t}"] = (i + 1) / (1 + step / 100)
            line[f"diag/{group}/weighted_grad_norm/{t}"] = (i + 1) / (1 + step / 50)
        pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
        for k, (a, b) in enumerate(pairs):
            line[f"diag/{group}/cos/{a}-{b}"] = math.cos(step / (60 + 20 * g) + k)
        cosines = [line[f"diag/{group}/cos/{a}-{b}"] for a, b in pairs]
        line[f"diag/{group}/conflict_rate"] = sum(c < 0 for c in cosines) / len(pairs)
        if step > 20:
            line[f"diag/{group}/sign_flip_rate"] = 0.2 + 0.1 * math.sin(step / 30 + g)
    line.update({f"diag/loss_ratio/{t}": math.exp(-step / 300) for t in TASKS})
    line.update({f"diag/weight/{t}": 1.0 for t in TASKS})
    return {**line, "step": step}


def write_log(run_dir: Path, lines: list[dict]) -> Path:
    path = run_dir / "vis_data" / "scalars.json"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def full_log() -> list[dict]:
    lines = []
    for step in range(10, 201, 10):
        lines.append(train_line(step))
        if step % 20 == 0:
            lines.append(diag_line(step))
    lines.append({"det/mAP": 0.1, "seg/mIoU": 20.0, "time": 0.1, "step": 200})  # validation
    return lines


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """An older training run, the newest training run, and a later test-only run."""
    write_log(tmp_path / "20250101_000000", [train_line(10)])
    write_log(tmp_path / "20250102_000000", full_log())
    write_log(tmp_path / "20250103_000000", [{"det/mAP": 0.2, "step": 200}])
    return tmp_path


def test_the_newest_run_that_trained_is_read(work_dir: Path) -> None:
    assert find_scalars(work_dir) == work_dir / "20250102_000000/vis_data/scalars.json"


def test_the_series_are_what_was_written(work_dir: Path) -> None:
    scalars = read_scalars(find_scalars(work_dir))
    steps = list(range(10, 201, 10))
    diag_steps = list(range(20, 201, 20))
    assert scalars["loss_det"].steps == steps
    assert scalars["loss_det"].values == [train_line(s)["loss_det"] for s in steps]
    assert list(with_prefix(scalars, "loss_")) == list(TASKS)
    assert with_prefix(scalars, "weight_")["depth"].values == [
        train_line(s)["weight_depth"] for s in steps
    ]
    assert diagnostic_groups(scalars) == list(GROUPS)
    cos = with_prefix(scalars, "diag/det+seg+depth+normals/cos/")
    assert list(cos) == ["det-seg", "det-depth", "det-normals", "seg-depth", "seg-normals"] + [
        "depth-normals"
    ]
    assert cos["seg-depth"].steps == diag_steps
    assert cos["seg-depth"].values == [
        diag_line(s)["diag/det+seg+depth+normals/cos/seg-depth"] for s in diag_steps
    ]
    assert scalars["diag/det+seg/sign_flip_rate"].steps == diag_steps[1:]
    assert scalars["seg/mIoU"].steps == [200] and scalars["seg/mIoU"].values == [20.0]


def test_a_record_cut_short_is_left_out(tmp_path: Path) -> None:
    path = write_log(tmp_path / "20250101_000000", [train_line(10), train_line(20)])
    path.write_text(path.read_text() + json.dumps(train_line(30))[:40])
    assert read_scalars(path)["loss_det"].steps == [10, 20]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 400
    assert np.ptp(image[..., :3]) > 0  # something was drawn


def test_every_picture_is_drawn(work_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written, skipped = write_plots(read_scalars(find_scalars(work_dir)), out)
    assert written == [out / name for name in PICTURES]
    assert skipped == []
    for path in written:
        assert_png(path)


def test_without_diagnostics_only_losses_and_weights_are_drawn(tmp_path: Path) -> None:
    path = write_log(tmp_path / "20250101_000000", [train_line(s) for s in (10, 20)])
    written, skipped = write_plots(read_scalars(path), tmp_path / "plots")
    assert [p.name for p in written] == ["losses.png", "weights.png"]
    assert len(skipped) == 1 and "no diag/ scalars" in skipped[0]
    for path in written:
        assert_png(path)


def test_weights_fall_back_to_the_diagnostics(tmp_path: Path) -> None:
    lines = [{k: v for k, v in train_line(s).items() if "weight" not in k} for s in (10, 20)]
    path = write_log(tmp_path / "20250101_000000", [*lines, diag_line(20)])
    written, skipped = write_plots(read_scalars(path), tmp_path / "plots")
    assert [p.name for p in written] == PICTURES and skipped == []


def escalation_line(step: int) -> dict:
    """The escalation's signals beside a diagnostics line: imbalance crosses its threshold
    0.7 from step 60 and its remedy is on from 80; conflict stays below 0.1."""
    imbalance = 0.5 + step / 200
    return {
        "diag/escalation/conflict": 0.02,
        "diag/escalation/conflict_average": 0.02,
        "diag/escalation/conflict_threshold": 0.1,
        "diag/escalation/conflict_on": 0.0,
        "diag/escalation/imbalance": imbalance,
        "diag/escalation/imbalance_average": imbalance - 0.05,
        "diag/escalation/imbalance_threshold": 0.7,
        "diag/escalation/imbalance_on": float(step >= 80),
        "step": step,
    }


def test_the_switches_are_the_first_measurements_with_the_remedy_on() -> None:
    on = {
        "diag/escalation/imbalance_on": Series([25, 50, 75, 100], [0.0, 0.0, 1.0, 1.0]),
        "diag/escalation/conflict_on": Series([25, 50, 75, 100], [0.0, 0.0, 0.0, 1.0]),
    }
    assert escalation_switches(on) == [
        Switch(75, "imbalance", "equal gradient norms"),
        Switch(100, "conflict", "PCGrad"),
    ]
    never = {"diag/escalation/conflict_on": Series([25, 50], [0.0, 0.0])}
    assert escalation_switches(never) == []
    assert escalation_switches({}) == []


def test_an_escalation_is_drawn_and_marked(tmp_path: Path) -> None:
    lines = full_log()
    lines += [escalation_line(step) for step in range(20, 201, 20)]
    path = write_log(tmp_path / "20250101_000000", lines)
    scalars = read_scalars(path)
    written, skipped = write_plots(scalars, tmp_path / "plots")
    assert [p.name for p in written] == [*PICTURES, "escalation.png"] and skipped == []
    assert escalation_switches(scalars) == [Switch(80, "imbalance", "equal gradient norms")]
    for path in written:
        assert_png(path)
    # the switch's line is drawn: the same run without it differs in the pictures over time
    unmarked = [{k: v for k, v in line.items() if not k.endswith("_on")} for line in lines]
    plain, _ = write_plots(
        read_scalars(write_log(tmp_path / "20250102_000000", unmarked)), tmp_path / "plain"
    )
    for marked, drawn in zip(written, plain, strict=True):
        same = np.array_equal(imread(marked), imread(drawn))
        assert same == (marked.name == "cosine.png"), marked.name


@pytest.mark.parametrize(
    ("runs", "error", "message"),
    [
        (None, FileNotFoundError, "is not a directory"),
        ({}, FileNotFoundError, "no mmengine logs in"),
        ({"20250101_000000": [{"det/mAP": 0.2, "step": 1}]}, ValueError, "no training losses"),
    ],
    ids=["missing", "empty", "test_runs_only"],
)
def test_clear_errors(tmp_path: Path, runs, error, message: str) -> None:
    work_dir = tmp_path / "work"
    if runs is not None:
        work_dir.mkdir()
        for name, lines in runs.items():
            write_log(work_dir / name, lines)
    with pytest.raises(error, match=message):
        find_scalars(work_dir)


def test_the_command_line(work_dir: Path, tmp_path: Path, capsys) -> None:
    tool = load_tool("analyze_logs")
    assert tool.main([str(work_dir)]) == 0
    run = work_dir / "20250102_000000"
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(PICTURES)
    assert f"read {run / 'vis_data/scalars.json'}" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")]) == 1
    assert "analyze_logs: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
