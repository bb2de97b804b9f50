"""`python -m dashboards STUDY_DIR [--tracking-uri URI] [--index RESULTS_ROOT]`: a study's report from its results
files, and the index of every study beside it. How `mm1ablate run` and `mm1ablate report` write them: the results
files are all that passes between running a study and reporting it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.index import write_index
from dashboards.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument(
        "--tracking-uri", default=None, help="named in the report, credentials already redacted"
    )
    parser.add_argument("--index", type=Path, default=None, help="also write RESULTS_ROOT/index.html")
    parser.add_argument(
        "--when-told",
        action="store_true",
        help="load, then write only once a line arrives on standard input (its end: write nothing)",
    )
    args = parser.parse_args(argv)
    if args.when_told and not sys.stdin.readline():
        return
    print(write_report(args.study_dir, tracking_uri=args.tracking_uri))
    if args.index is not None:
        print(write_index(args.index))


if __name__ == "__main__":
    main()
