"""Generate the bundled example cohort (images, landmarks and, optionally, a sample sheet).

Usage: python scripts/make_example_cohort.py --outdir example/data [--size 256] [--sheet PATH]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from regflow.example import make_cohort  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", required=True, help="folder for images and landmarks")
    parser.add_argument("--size", type=int, default=None, help="side of the base slide (px)")
    parser.add_argument("--sheet", default=None, help="also write a sample sheet (TSV) here")
    args = parser.parse_args()
    sheet = make_cohort(args.outdir, args.size)
    if args.sheet:
        sheet.to_csv(args.sheet, sep="\t", index=False)
    print(f"wrote {len(sheet)} example pairs to {args.outdir}")


if __name__ == "__main__":
    main()
