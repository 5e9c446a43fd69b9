"""``bliss-make-demo-repo``: a Butler repo of simulated calexps with truth tables."""

from __future__ import annotations

__all__ = ["make_demo_repo_main"]

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..io import BlissModel
from ..pipeline.demo import DemoRepoConfig, build_demo_repo


def make_demo_repo_main(argv: Sequence[str] | None = None) -> int:
    defaults = DemoRepoConfig()
    parser = argparse.ArgumentParser(
        prog="bliss-make-demo-repo",
        description="Create a SQLite Butler repo with simulated calexps (VisitImage: spatially varying "
        "Piff PSF, masks, TAN WCS) and their truth tables (bliss_truth), at the model's conditions.",
    )
    parser.add_argument("repo", type=Path, help="directory of the new repo")
    parser.add_argument("--visits", type=int, default=defaults.n_visits, help="number of visits (default 2)")
    parser.add_argument(
        "--detectors", type=int, default=defaults.n_detectors, help="detectors per visit (default 2)"
    )
    parser.add_argument("--height", type=int, default=defaults.height, help="detector rows (default 1024)")
    parser.add_argument("--width", type=int, default=defaults.width, help="detector columns (default 1024)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the simulation")
    parser.add_argument(
        "--collection", default=defaults.calexp_collection, help="RUN collection (default BlissSim/calexp)"
    )
    parser.add_argument(
        "--bands",
        nargs="+",
        default=list(defaults.visit_bands),
        help="band of each visit, repeated in turn (bands the model was trained for; default: every visit "
        "in the model's nominal band)",
    )
    parser.add_argument("--no-defects", action="store_true", help="no bad columns, cosmic rays, ...")
    parser.add_argument("--model", type=Path, default=None, help="model whose conditions to simulate")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing repo")
    args = parser.parse_args(argv)
    try:
        config = DemoRepoConfig(
            n_visits=args.visits,
            n_detectors=args.detectors,
            height=args.height,
            width=args.width,
            seed=args.seed,
            calexp_collection=args.collection,
            defects=not args.no_defects,
            visit_bands=tuple(args.bands),
        )
        model = BlissModel.load(args.model) if args.model is not None else None
        start = time.perf_counter()
        summary = build_demo_repo(args.repo, config, model=model, overwrite=args.overwrite, log=print)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"bliss-make-demo-repo: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"created {summary['root']} in {elapsed:.1f} s: {len(summary['data_ids'])} calexps and truth "
        f"tables in RUN collection {summary['calexp_collection']}"
    )
    return 0
