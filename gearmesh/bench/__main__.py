"""`python -m gearmesh.bench SCENARIO ...`: the same as `gearmesh bench`."""

from __future__ import annotations

import argparse
import sys

from gearmesh.bench import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gearmesh bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
