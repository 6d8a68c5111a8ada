"""Best reward so far after a few evaluations, per kind of search, read from kept evaluations CSVs.

    python -m bench.transfer_curves 'GLOB' ['GLOB' ...] [--at 10,25,50] [--out FILE]

A transfer bench reads each search at its end only (the warm starts at 50 evaluations, the searches from scratch
at 200). Whether a warm start is ahead early and falls behind, or never ahead, shows in the best so far at a few
evaluation counts, which this tables for every group: the CSVs of one folder whose names differ only by a seed
suffix (`-sN`), say `warm-start`, `warm-start-s1`, `warm-start-s2` of a folder's `reuse/evaluations/`. A search
shorter than a count is read at its end and marked in the `runs` column.
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

import pandas as pd

from pruning.checkpoint import atomic_write_text
from pruning.errors import UserError
from search.report import markdown_table
from search.review import completed_evaluations

SEED_SUFFIX = re.compile(r"-s\d+$")


def best_so_far(path: Path) -> pd.Series:
    """The best reward after each completed evaluation of one search (index 1, 2, ...)."""
    done = completed_evaluations(path, ["reward"], "a search's evaluations.csv")
    if done.empty:
        raise UserError(f"{path}: no completed evaluation")
    curve = done["reward"].astype(float).cummax().reset_index(drop=True)
    curve.index += 1
    return curve


def group_name(path: Path) -> str:
    """'<folder>: <run>' with the run's seed suffix dropped; the folder is the one above `reuse/evaluations/` (a
    transfer bench's) or above `evaluations/`, without a leading `results/bench/`."""
    folder = path.parent
    while folder.name in ("evaluations", "reuse") and folder.parent != folder:
        folder = folder.parent
    shown = folder.as_posix().removeprefix("results/bench/")
    return f"{shown}: {SEED_SUFFIX.sub('', path.stem)}"


def curves_table(patterns: list[str], counts: list[int]) -> pd.DataFrame:
    """One row per group: its runs, and the mean over them of the best reward after each of `counts`."""
    files = sorted({Path(path) for pattern in patterns for path in glob.glob(pattern)})
    if not files:
        raise UserError(f"{' '.join(patterns)}: no evaluations CSV matches")
    groups: dict[str, list[pd.Series]] = {}
    for path in files:
        groups.setdefault(group_name(path), []).append(best_so_far(path))
    rows = []
    for name, curves in groups.items():
        row: dict = {"group": name, "runs": len(curves), "evaluations": "/".join(str(len(c)) for c in curves)}
        for count in counts:
            row[f"best reward after {count}"] = round(sum(float(c.iloc[min(count, len(c)) - 1]) for c in curves)
                                                      / len(curves), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c]
    except ValueError:
        raise UserError(f"--at: expected comma-separated evaluation counts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--at: expected counts of at least 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transfer_curves", description=__doc__.split("\n")[0])
    p.add_argument("patterns", nargs="+", help="globs of evaluations CSVs (quote them)")
    p.add_argument("--at", default="10,25,50", help="evaluation counts, comma-separated (default 10,25,50)")
    p.add_argument("--out", default=None, help="Markdown file to write; default: print only")
    args = p.parse_args(argv)
    try:
        table = curves_table(args.patterns, parse_counts(args.at))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m bench.transfer_curves", *(f"'{g}'" for g in args.patterns), f"--at {args.at}",
                        *([f"--out {args.out}"] if args.out else [])])
    text = (f"# Best reward so far, mean over each group's searches\n\n`{command}`\n\n"
            f"A search with fewer evaluations than a column is read at its end (the `evaluations` column lists each "
            f"run's).\n\n{markdown_table(table)}\n")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
