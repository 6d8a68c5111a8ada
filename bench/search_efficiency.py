"""Search throughput on Ray Tune: evaluations per minute with 1 and 2 workers, and time inside evaluations.

    python -m bench.search_efficiency [CONFIG] [EVALUATIONS]

Runs `prunepilot search` (embedded Ray, DDPG searcher, no final pass) twice, side by side in one
run: concurrency 1 and 2, one CPU (one torch thread) per trial. Targets: with 2 workers at least
85% of the Tune wall time is spent inside evaluations, and at least 1.7x the evaluations per minute
of 1 worker. `prunepilot bench` runs the same measurement into its own folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import write_results
from search.report import markdown_table


def run(config: str, evaluations: int, concurrency: int, folder: Path, overrides: tuple[str, ...] = ()) -> dict:
    out = folder / f"c{concurrency}"
    cmd = [sys.executable, "-m", "search.cli", "search", config, "--backend", "ray", "--out", str(out), "--quiet",
           *overrides, f"search.evaluations={evaluations}", f"search.concurrency={concurrency}",
           "search.cpus_per_trial=1", "search.final_pass=false", "search.searcher=ddpg", "agent.name=ddpg",
           f"agent.warmup_episodes={evaluations // 2}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "search_summary.json").read_text())
    table = pd.read_csv(out / "evaluations.csv")
    wall = summary["tune_seconds"]
    inside = float(table["eval_seconds"].sum())
    return {"concurrency": concurrency, "evaluations": len(table), "tune_seconds": wall,
            "evaluations_per_minute": 60 * len(table) / wall, "seconds_inside_evaluations": inside,
            "fraction_inside_evaluations": inside / (concurrency * wall),
            "median_eval_seconds": float(table["eval_seconds"].median())}


def measure(config: str, evaluations: int, overrides: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Both runs, side by side in one call; (figures, Markdown)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(config, evaluations, c, Path(tmp), overrides) for c in (1, 2)]
    one, two = rows
    speedup = two["evaluations_per_minute"] / one["evaluations_per_minute"]
    inside = two["fraction_inside_evaluations"]
    md = (f"# Search efficiency (`{config}`, {evaluations} evaluations, DDPG, embedded Ray, one CPU per trial)\n\n"
          f"{markdown_table(pd.DataFrame(rows))}\n\n"
          f"- 2 workers vs 1: **x{speedup:.2f}** evaluations per minute (target >= 1.7: "
          f"{'met' if speedup >= 1.7 else 'NOT met'})\n"
          f"- time inside evaluations with 2 workers: **{100 * inside:.1f}%** of the Tune wall time x workers "
          f"(target >= 85%: {'met' if inside >= 0.85 else 'NOT met'})\n")
    return {"config": config, "rows": rows, "speedup": speedup, "fraction_inside_evaluations": inside}, md


def main(argv: list[str]) -> None:
    config = argv[0] if argv else "configs/resnet20_fmnist.yaml"
    evaluations = int(argv[1]) if len(argv) > 1 else 24
    figures, md = measure(config, evaluations)
    md += f"\nRegenerate: `python -m bench.search_efficiency {config} {evaluations}`\n"
    print(md)
    write_results("search_efficiency", figures, md)


if __name__ == "__main__":
    main(sys.argv[1:])
