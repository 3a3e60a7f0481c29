"""Draw the newest training run's logs under a work dir as PNGs: per-task losses and weights, and
the gradient diagnostics (norms, cosines, conflict and sign-flip rates) when they were logged, and
the escalation's signals against its thresholds, its switches marked on every picture over time.

    python tools/analyze_logs.py work_dirs/ad_mtl --out-dir plots/ad_mtl

The pictures go to ``<work_dir>/<timestamp>/plots`` unless ``--out-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adperception.diagnostics.plots import find_scalars, read_scalars, write_plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", metavar="WORK_DIR")
    parser.add_argument("--out-dir", type=Path, help="where to write the PNGs")
    args = parser.parse_args(argv)
    try:
        path = find_scalars(args.work_dir)
        out_dir = args.out_dir or path.parents[1] / "plots"
        written, skipped = write_plots(read_scalars(path), out_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"analyze_logs: {err}", file=sys.stderr)
        return 1
    print(f"read {path}")
    for note in skipped:
        print(f"skipped {note}")
    for file in written:
        print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
