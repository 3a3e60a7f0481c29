"""Compare training runs by their validation metrics: a Markdown table of every metric at every
validation step, and a picture of each metric against the iteration.

    python tools/compare_runs.py base=work_dirs/a "dn 200=work_dirs/b" \
        --metrics det/mAP_50 seg/mIoU --out curves.png

Each run is LABEL=WORK_DIR (or a WORK_DIR, labelled by its name); the newest training run in the
work dir is read, as ``tools/analyze_logs.py`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adperception.diagnostics.plots import Series, find_scalars, plot_metric_curves, read_scalars


def parse_run(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep else (Path(text).name, Path(text))


def table(runs: dict[str, dict[str, Series]], metrics: list[str]) -> str:
    rows = ["| run | iteration | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for label, scalars in runs.items():
        steps = sorted({s for m in metrics if m in scalars for s in scalars[m].steps})
        for step in steps:
            cells = []
            for metric in metrics:
                series = scalars.get(metric, Series())
                value = dict(zip(series.steps, series.values, strict=True)).get(step)
                cells.append("" if value is None else f"{value:.4g}")
            rows.append(f"| {label} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]WORK_DIR")
    parser.add_argument("--metrics", nargs="+", default=["det/mAP_50"])
    parser.add_argument("--out", type=Path, help="the PNG to draw (none: the table only)")
    args = parser.parse_args(argv)
    runs: dict[str, dict[str, Series]] = {}
    try:
        for label, work_dir in map(parse_run, args.runs):
            if label in runs:
                raise ValueError(f"two runs are labelled {label!r}")
            runs[label] = read_scalars(find_scalars(work_dir))
        print(table(runs, args.metrics))
        if args.out:
            print(f"wrote {plot_metric_curves(runs, args.metrics, args.out)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
