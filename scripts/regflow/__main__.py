"""``python -m regflow --version``: the version every JSON output records."""

import argparse

from . import __version__


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m regflow",
        description="regflow's library (the workflow runs with snakemake; see README.md)",
    )
    parser.add_argument("--version", action="version", version=f"regflow {__version__}")
    parser.parse_args()
    parser.print_help()


if __name__ == "__main__":
    main()
