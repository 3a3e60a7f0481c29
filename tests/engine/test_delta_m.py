"""The Δm sweep: the formula against hand-computed values, and a tiny sweep (two tasks, one
balancer, one seed, two iterations) trained, reported, and resumed at both levels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from adperception.data.synth import generate_dataset
from adperception.engine.delta_m import (
    RunResult,
    Sweep,
    _mean_std,
    data_fingerprint,
    delta_m,
    report,
    result_path,
    results_dir,
    run_dir,
    run_sweep,
    source_commit,
    task_deltas,
)

ROOT = Path(__file__).resolve().parents[2]


def test_delta_m_of_the_papers_formula() -> None:
    """Task a (higher is better): 50 → 55 is +10 %. Task b (lower is better, two metrics):
    2.0 → 2.2 is −10 %, 1.0 → 0.9 is +10 %, averaging 0. Δm = (10 + 0) / 2 = 5."""
    metrics = {"a": {"a/acc": 1}, "b": {"b/err": -1, "b/rmse": -1}}
    single = {"a": {"a/acc": 50.0}, "b": {"b/err": 2.0, "b/rmse": 1.0}}
    joint = {"a/acc": 55.0, "b/err": 2.2, "b/rmse": 0.9}
    assert delta_m(joint, single, metrics) == pytest.approx(5.0)
    assert task_deltas(joint, single, metrics) == pytest.approx({"a": 10.0, "b": 0.0})
    assert delta_m({"a/acc": 50.0, "b/err": 2.0, "b/rmse": 1.0}, single, metrics) == 0.0


@pytest.fixture
def sweep_config(tmp_path: Path) -> Path:
    data = tmp_path / "synth"
    generate_dataset(data, {"train": 4, "val": 2}, seed=5, height=64, width=128)
    joint = tmp_path / "joint.py"
    loader = f"dict(num_workers=0, persistent_workers=False, dataset=dict(data_root={str(data)!r}))"
    joint.write_text(
        f"_base_ = [{str(ROOT / 'configs/quickstart.py')!r}]\n"
        "model = dict(heads=dict(_delete_=True, seg={{_base_.model.heads.seg}}, "
        "depth={{_base_.model.heads.depth}}))\n"
        f"train_dataloader = {loader}\nval_dataloader = {loader}\ntest_dataloader = {loader}\n"
        "val_evaluator = dict(tasks=('seg', 'depth'))\ntest_evaluator = val_evaluator\n"
    )
    path = tmp_path / "sweep.py"
    path.write_text(
        f"joint = {str(joint)!r}\n"
        "iters = 2\n"
        "seeds = 1\n"
        "metrics = dict(seg={'seg/mIoU': 1}, depth={'depth/abs_rel': -1})\n"
        "methods = dict(EqualWeighting=dict(type='EqualWeighting'))\n"
    )
    return path


def test_the_single_task_runs_are_the_joint_network_with_one_task(sweep_config: Path) -> None:
    sweep = Sweep.from_config(Config.fromfile(sweep_config))
    single = sweep.single_task_config("depth")
    assert set(single.model.heads) == {"depth"}
    assert single.model.backbone.branches == {"depth": ["depth"]}
    assert single.model.balancer == dict(type="EqualWeighting")
    assert single.test_evaluator.tasks == ("depth",)
    assert single.model.heads.depth == sweep.joint.model.heads.depth
    # the quickstart's rate for the detection head goes with the heads this run lacks
    assert set(sweep.joint.optim_wrapper.paramwise_cfg.custom_keys) == {"backbone", "heads.det"}
    assert set(single.optim_wrapper.paramwise_cfg.custom_keys) == {"backbone"}
    assert sweep.plan() == [
        ("seg", True, 0),
        ("depth", True, 0),
        ("EqualWeighting", False, 0),
    ]


def test_a_bad_sweep_config_is_named(tmp_path: Path, sweep_config: Path) -> None:
    text = sweep_config.read_text().replace("'seg/mIoU': 1", "'seg/mIoU': 2")
    bad = tmp_path / "bad.py"
    bad.write_text(text)
    with pytest.raises(ValueError, match=r"metrics.seg must map metric keys to \+1"):
        Sweep.from_config(Config.fromfile(bad))


def test_other_networks_run_from_their_own_config_against_the_same_references(
    tmp_path: Path, sweep_config: Path
) -> None:
    joint = Config.fromfile(sweep_config).joint
    shared = tmp_path / "hard.py"
    shared.write_text(
        f"_base_ = [{joint!r}]\n"
        "model = dict(backbone=dict(shared_stages=4, branches=dict(_delete_=True, "
        "all=['seg', 'depth'])), balancer=dict(_delete_=True, type='PCGrad'))\n"
    )
    with_network = tmp_path / "sweep_networks.py"
    with_network.write_text(sweep_config.read_text() + f"networks = dict(hard={str(shared)!r})\n")
    sweep = Sweep.from_config(Config.fromfile(with_network))
    assert sweep.plan() == [
        ("seg", True, 0),
        ("depth", True, 0),
        ("EqualWeighting", False, 0),
        ("hard", False, 0),
    ]
    network = sweep.joint_config("hard")
    assert network.model.backbone.branches == {"all": ["seg", "depth"]}
    assert network.model.balancer.type == "PCGrad"
    assert network.model.balancer.measure_interval == 25  # the diagnostics' interval, as a method's
    assert sweep.joint_config("EqualWeighting").model.backbone.shared_stages == 2
    # the single-task references stay the joint config's network
    assert sweep.single_task_config("seg").model.backbone.shared_stages == 2
    other_tasks = tmp_path / "seg_only.py"
    other_tasks.write_text(
        f"_base_ = [{joint!r}]\n"
        "model = dict(heads=dict(_delete_=True, seg={{_base_.model.heads.seg}}))\n"
    )
    bad = tmp_path / "bad_networks.py"
    bad.write_text(sweep_config.read_text() + f"networks = dict(seg_only={str(other_tasks)!r})\n")
    with pytest.raises(ValueError, match=r"networks.seg_only .* must train the joint config's"):
        Sweep.from_config(Config.fromfile(bad))


def test_a_tiny_sweep_reports_and_resumes(sweep_config: Path, tmp_path: Path, capsys) -> None:
    work, out = tmp_path / "work", tmp_path / "table.md"
    results = run_sweep(sweep_config, work_dir=work, out=out)
    assert [(r.name, r.single_task) for r in results] == [
        ("seg", True),
        ("depth", True),
        ("EqualWeighting", False),
    ]
    by_name = {r.name: r for r in results}
    joint = by_name["EqualWeighting"]
    expected = delta_m(
        joint.metrics,
        {"seg": by_name["seg"].metrics, "depth": by_name["depth"].metrics},
        {"seg": {"seg/mIoU": 1}, "depth": {"depth/abs_rel": -1}},
    )
    table = out.read_text()
    row = next(line for line in table.splitlines() if line.startswith("| EqualWeighting"))
    assert f"| {expected:.2f} |" in row
    picture = tmp_path / "table" / "task_deltas.png"  # beside the results, linked from the table
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![each task's term of Δm, per run](table/task_deltas.png)" in table
    assert joint.params > by_name["depth"].params and joint.step_s > 0
    assert "Not run yet" not in table

    # finished runs are not trained again
    capsys.readouterr()
    run_sweep(sweep_config, work_dir=work, out=out)
    assert "3 of 3 runs done, 0 to go" in capsys.readouterr().out
    # an unfinished run resumes from its last checkpoint: the same final weights, same metrics
    results = results_dir(out)
    assert results == tmp_path / "table" / "results"
    result = result_path(results, "EqualWeighting", False, 0)
    assert result == results / "joint" / "EqualWeighting" / "seed0.json"
    result.unlink()
    assert (run_dir(work, "EqualWeighting", False, 0) / "last_checkpoint").exists()
    # a part of the sweep (no joint method) reports on the whole one, and how to finish it
    partial = run_sweep(sweep_config, work_dir=work, out=out, methods=[])
    assert [r.name for r in partial] == ["seg", "depth"]
    table = out.read_text()
    assert "Not run yet (1): joint EqualWeighting seed 0." in table
    assert f"`python tools/run_delta_m.py {sweep_config} --work-dir {work} --out {out}`" in table
    again = run_sweep(sweep_config, work_dir=work, out=out)
    assert {r.name: r.metrics for r in again}["EqualWeighting"] == joint.metrics
    assert json.loads(result.read_text())["metrics"] == joint.metrics
    # every result says what made it; the joint and single-task runs share code and data
    assert {r.origin for r in again} == {joint.origin} and "unrecorded" not in joint.origin
    assert len({r.provenance["config"] for r in again}) == 3
    # --report-only rewrites the table from the finished runs alone, training nothing: the
    # joint run, whose result is gone but whose checkpoint would let it resume, is not trained
    references = [line for line in out.read_text().splitlines() if line.startswith("| single")]
    result.unlink()
    out.unlink()
    trained = sorted(work.rglob("*"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/run_delta_m.py"), str(sweep_config), "--report-only"]
        + ["--work-dir", str(work), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 of 3 runs finished; trained nothing" in proc.stdout
    table = out.read_text()
    assert "Not run yet (1): joint EqualWeighting seed 0." in table
    assert [line for line in table.splitlines() if line.startswith("| single")] == references
    assert not result.exists() and sorted(work.rglob("*")) == trained


def test_cells_keep_three_decimals_below_one() -> None:
    """abs_rel 0.104 and 0.108 must not both read 0.10/0.11: values below 1 keep 3 decimals."""
    assert _mean_std([0.1044]) == "0.104"
    assert _mean_std([0.104, 0.108]) == "0.106 ± 0.003"
    assert _mean_std([45.678]) == "45.68"
    assert _mean_std([]) == "–"


def test_the_data_fingerprint_follows_contents_not_timestamps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    frame = tmp_path / "a" / "frame.png"
    frame.write_bytes(b"12345")
    before = data_fingerprint([tmp_path])
    frame.touch()
    assert data_fingerprint([tmp_path]) == before
    frame.write_bytes(b"123456")  # a regenerated frame of another size
    resized = data_fingerprint([tmp_path])
    assert resized != before
    (tmp_path / "a" / "extra.png").write_bytes(b"")  # a file added, even an empty one
    assert data_fingerprint([tmp_path]) not in (before, resized)


def test_delta_m_compares_only_runs_of_the_same_code_and_data(sweep_config: Path) -> None:
    """A joint run trained by other code than its single-task references gets no Δm, and the
    report names the two versions; with matching references it gets the formula's value."""
    sweep = Sweep.from_config(Config.fromfile(sweep_config))
    old, new = {"code": "old", "data": "d"}, {"code": "new", "data": "d"}

    def run(name: str, single: bool, metrics: dict, origin: dict) -> RunResult:
        return RunResult(name, single, 0, metrics, 1, 1.0, provenance=dict(origin))

    refs = [
        run("seg", True, {"seg/mIoU": 50.0}, old),
        run("depth", True, {"depth/abs_rel": 0.2}, old),
    ]
    joint = run("EqualWeighting", False, {"seg/mIoU": 55.0, "depth/abs_rel": 0.2}, new)
    table = report([*refs, joint], sweep, sweep_config="sweep.py")
    row = next(line for line in table.splitlines() if line.startswith("| EqualWeighting"))
    assert row.split(" | ")[3] == "–"  # the Δm cell
    assert "**These runs come from 2 versions of the code or data**" in table
    assert "- code new, data d: joint EqualWeighting seed 0" in table
    assert "Where each Δm comes from" not in table  # no run has a Δm to split
    joint.provenance = dict(old)
    table = report([*refs, joint], sweep, sweep_config="sweep.py")
    row = next(line for line in table.splitlines() if line.startswith("| EqualWeighting"))
    assert row.split(" | ")[3] == "5.00"  # (+10 % + 0 %) / 2
    assert "versions of the code" not in table
    # each task's term: seg 50 → 55 is +10 %, depth unchanged
    assert "| run | Δ seg (%) | Δ depth (%) | Δm (%) |" in table
    assert "| EqualWeighting | 10.00 | 0.00 | 5.00 |" in table


def test_the_provenance_names_the_commit_to_resume_from() -> None:
    """The commit of the package's checkout (git's own answer), marked when its sources have
    uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "adperception"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert source_commit() == head + ("+changes" if dirty else "")


def test_the_tool_takes_the_report_and_work_dir_from_the_sweep_config(
    sweep_config: Path, tmp_path: Path
) -> None:
    """No --out and no ``out`` in the config: a named error, nothing trained."""
    tool = ROOT / "tools/run_delta_m.py"
    proc = subprocess.run(
        [sys.executable, str(tool), str(sweep_config)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "names no report" in proc.stderr
    for name in ("delta_m_synthdrive", "architectures_synthdrive"):
        cfg = Config.fromfile(ROOT / f"configs/experiments/{name}.py")
        assert cfg.out.startswith("docs/experiments/") and cfg.work_dir.startswith("work_dirs/")
    assert Config.fromfile(ROOT / "configs/experiments/architectures_synthdrive.py").out != (
        Config.fromfile(ROOT / "configs/experiments/delta_m_synthdrive.py").out
    )
