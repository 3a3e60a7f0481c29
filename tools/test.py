"""Evaluate a checkpoint on a config's test set; write the metrics as JSON.

    python tools/test.py configs/ad_mtl.py work_dirs/ad_mtl/iter_40000.pth --out metrics.json

Only rank 0 writes --out; the keys are those the config's metrics return.
"""

from __future__ import annotations

# ruff: noqa: E402  (the environment is set before torch is imported)
import os

# Before torch loads OpenMP: with spinning waits (the default), a torch thread that shares a
# core with a dataloader worker stalls every parallel region; measured 20 s instead of 0.6 s
# per quickstart step on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out", help="JSON file for the metrics (det/mAP, seg/mIoU, ...)")
    parser.add_argument("--work-dir", help="where the logs go")
    parser.add_argument(
        "--show-dir", help="write pictures of targets above predictions for a few images here"
    )
    parser.add_argument("--show-num", type=int, default=4, help="how many pictures (--show-dir)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, key=value (e.g. test_dataloader.batch_size=4)",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK itself.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv: list[str] | None = None) -> int:
    """Evaluate; a ``UserError`` (a wrong config key or file, a checkpoint that is damaged or
    does not fit the config) is printed as ``error: ...`` lines and returns 2."""
    args = parse_args(argv)
    # Imported after parsing so that --help answers without loading torch and the project.
    from mmengine.dist import is_main_process

    from adperception.engine import (
        UserError,
        build_runner,
        dump_metrics,
        load_config,
        select_dist_backend,
        set_work_dir,
        setup_runtime,
        shutdown_dist,
        validate_config,
    )

    try:
        setup_runtime()
        cfg = load_config(args.config)
        cfg.launcher = args.launcher
        if args.cfg_options is not None:
            cfg.merge_from_dict(args.cfg_options)
        set_work_dir(cfg, args.work_dir)
        if args.show_dir is not None:
            hook = dict(type="PredictionPanelHook", out_dir=args.show_dir, num=args.show_num)
            cfg.custom_hooks = [*cfg.get("custom_hooks", []), hook]
        cfg.load_from = args.checkpoint
        cfg.resume = False
        select_dist_backend(cfg)
        validate_config(cfg, dataloaders=("test_dataloader",), evaluation=True)
        metrics = build_runner(cfg).test()
        if args.out is not None and is_main_process():
            dump_metrics(metrics, args.out)
    except UserError as error:
        return error.report()
    finally:
        shutdown_dist()
    return 0


if __name__ == "__main__":
    sys.exit(main())
