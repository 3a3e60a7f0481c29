"""tools/compare_runs.py on two runs' scalar logs written as mmengine writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]
compare_runs = load_tool("compare_runs")


def write_run(work_dir: Path, maps: dict[int, float]) -> None:
    """A training run: loss lines every 50 iterations, validation lines at ``maps``' steps."""
    lines = [{"loss": 1.0, "loss_det": 1.0, "step": s} for s in range(50, 301, 50)]
    lines += [{"det/mAP_50": v, "seg/mIoU": 2 * v, "step": s} for s, v in maps.items()]
    lines.sort(key=lambda line: line["step"])
    path = work_dir / "20260101_000000" / "vis_data" / "scalars.json"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    write_run(tmp_path / "a", {100: 1.5, 200: 4.25, 300: 9.0})
    write_run(tmp_path / "b", {150: 2.0, 300: 12.5})
    return tmp_path / "a", tmp_path / "b"


def test_table_and_picture(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    a, b = runs
    out = tmp_path / "plots" / "curves.png"
    argv = [f"base={a}", str(b), "--metrics", "det/mAP_50", "seg/mIoU", "--out", str(out)]
    assert compare_runs.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | iteration | det/mAP_50 | seg/mIoU |"
    assert lines[2:7] == [
        "| base | 100 | 1.5 | 3 |",
        "| base | 200 | 4.25 | 8.5 |",
        "| base | 300 | 9 | 18 |",
        "| b | 150 | 2 | 4 |",
        "| b | 300 | 12.5 | 25 |",
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out).shape[:2] == (400, 1000)  # two 5×4-inch panels at 100 dpi
    five = ["det/mAP_50", "seg/mIoU", "det/mAP_50", "seg/mIoU", "det/mAP_50"]
    assert compare_runs.main([str(a), "--metrics", *five, "--out", str(out)]) == 0
    assert imread(out).shape[:2] == (800, 1500)  # three to a row


def test_a_metric_no_run_logged_is_an_error(runs: tuple[Path, Path], capsys) -> None:
    a, b = runs
    assert compare_runs.main([str(a), str(b), "--metrics", "det/mAP_75", "--out", "x.png"]) == 1
    assert "no run logged ['det/mAP_75']" in capsys.readouterr().err


def test_two_runs_with_one_label_are_refused(runs: tuple[Path, Path], capsys) -> None:
    a, b = runs
    assert compare_runs.main([f"x={a}", f"x={b}"]) == 1
    assert "two runs are labelled 'x'" in capsys.readouterr().err
