"""`python -m dashboards [STUDY_DIR] [--tracking-uri URI] [--index RESULTS_ROOT]`: a study's report from its results
files, and the index of every study beside it (or the index alone). How `mm1ablate run` and `mm1ablate report`
write them: the results files are all that passes between running a study and reporting it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dashboards.index import write_index
from dashboards.report import write_report
from dashboards.views import warm_up_figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "study_dir", type=Path, nargs="?", help="the study to report on; without it, --index alone"
    )
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
    if args.study_dir is None and args.index is None:
        parser.error("nothing to write: name a study folder, --index RESULTS_ROOT, or both")
    if args.when_told:
        warm_up_figures()
        if not sys.stdin.readline():
            return
    if args.study_dir is not None:
        print(write_report(args.study_dir, tracking_uri=args.tracking_uri))
    if args.index is not None:
        print(write_index(args.index))
    if args.when_told:
        # The run that told it waits for its exit: the interpreter's teardown of pandas, scipy and plotly is 0.3-0.5 s
        # of the study's end that nothing needs, the files being written and closed (bench/README.md, run overhead).
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
