"""Map a point CSV (landmarks, cell centroids) between the two images of a registered pair.

Usage::

    python scripts/map_points.py --transform results/S1/transform.npz \\
        --points cells_moving.csv --out cells_in_fixed.csv [--direction moving_to_fixed]

Columns X (column) and Y (row), in full-resolution pixels, with or without a leading index
column; other columns are kept. Points that cannot be mapped get empty X/Y; no row is dropped.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from regflow.points import map_points_table, read_points_table, write_points  # noqa: E402
from regflow.transform import Transform  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transform", required=True, help="transform.npz written by the workflow")
    parser.add_argument("--points", required=True, help="input CSV with X, Y columns")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument(
        "--direction", choices=("moving_to_fixed", "fixed_to_moving"), default="moving_to_fixed"
    )
    args = parser.parse_args()
    table = read_points_table(args.points)
    mapped = map_points_table(table, Transform.load(args.transform), args.direction)
    write_points(args.out, mapped)
    lost = int(np.isnan(mapped.xy[:, 0]).sum() - np.isnan(table.xy[:, 0]).sum())
    print(f"mapped {len(table)} point(s) {args.direction}; {lost} could not be mapped")


if __name__ == "__main__":
    main()
