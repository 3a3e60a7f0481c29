"""The MNIST experiment's methods tables (every balancer the digits compare), and
``run_experiment(resume=True)``: a finished run of the same config is kept, a changed one is
trained again (on the digits, 20 iterations)."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

from adperception.engine.experiment import load_methods, run_experiment

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "configs/experiments/mnist.py"


def test_methods_start_as_a_practitioner_learns_and_the_variant_rescales_static_weights() -> None:
    plain = load_methods(Config.fromfile(MNIST), None)
    assert list(plain)[:4] == ["EqualWeighting", "UncertaintyWeighting", "GradNorm", "PCGrad"]
    digits = load_methods(Config.fromfile(ROOT / "configs/experiments/digits.py"), None)
    assert list(plain) == list(digits)  # the same rows, in the same order
    assert plain["pcgrad_k8"] == digits["pcgrad_k8"]
    # one pass over the data for DWA: 4000 and 1437 training images at batch 64
    assert (plain["DWA"]["epoch_iters"], digits["DWA"]["epoch_iters"]) == (62, 22)
    imbalanced = Config.fromfile(ROOT / "configs/experiments/mnist_imbalanced.py")
    assert imbalanced.model.loss_scale == dict(parity=100.0)
    assert (
        imbalanced.model.image_size == 28 and imbalanced.train_dataloader.dataset.type == "MNISTMTL"
    )
    methods = load_methods(imbalanced, None)
    assert list(methods) == list(plain)
    assert methods["StaticWeighting"]["weights"] == dict(digit=0.43, parity=0.0144)


def test_resume_keeps_finished_runs_of_the_same_config(tmp_path: Path) -> None:
    kwargs = dict(
        methods=["EqualWeighting"],
        seeds=1,
        work_dir=tmp_path / "runs",
        out=tmp_path / "report.md",
        resume=True,
    )
    config = str(ROOT / "configs/experiments/digits.py")
    (first,) = run_experiment([config], iters=20, **kwargs)
    record = first.work_dir / "run.json"
    written = record.stat().st_mtime_ns
    (again,) = run_experiment([config], iters=20, **kwargs)
    assert again == first and record.stat().st_mtime_ns == written
    (changed,) = run_experiment([config], iters=21, **kwargs)
    assert record.stat().st_mtime_ns != written and changed.seconds != first.seconds
