"""``bliss-demo-report``: per-detector source counts and precision/recall of a demo run."""

from __future__ import annotations

__all__ = ["demo_report_main"]

import argparse
import logging
import sys
from collections.abc import Sequence

from ..pipeline.demo import demo_scores, format_scores, tables_tour


def demo_report_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bliss-demo-report",
        description="Read bliss_source and bliss_truth through the Butler and print per-detector source "
        "counts and detection precision/recall (one-to-one matches within the radius).",
    )
    parser.add_argument("repo", help="Butler repo")
    parser.add_argument("--collections", required=True, nargs="+", help="collections with outputs and truth")
    parser.add_argument("--match-radius", type=float, default=1.0, help="match radius, pixels (default 1)")
    parser.add_argument("--bright-mag", type=float, default=24.0, help="magnitude limit of the bright recall")
    parser.add_argument(
        "--tables",
        action="store_true",
        help="also show how to use the outputs: a Butler query, butler.get of bliss_source, a blend "
        "family, and two detectors' tables joined with their models by sourceId",
    )
    args = parser.parse_args(argv)
    # Reading ArrowAstropy tables makes the Butler warn that pandas (an optional conversion target)
    # is missing; irrelevant here.
    logging.getLogger("lsst.daf.butler._storage_class").setLevel(logging.ERROR)
    try:
        scores = demo_scores(
            args.repo, args.collections, match_radius_pix=args.match_radius, bright_mag=args.bright_mag
        )
    except LookupError as err:
        print(f"bliss-demo-report: {err}", file=sys.stderr)
        return 1
    print(format_scores(scores, args.bright_mag))
    if args.tables:
        print(tables_tour(args.repo, args.collections))
    return 0
