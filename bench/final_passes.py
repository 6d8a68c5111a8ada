"""Final passes of chosen policies, side by side: `python -m bench.final_passes FOLDER`.

`prunepilot bench` runs a final pass for each comparison run only with `bench.final_pass` on (the full
protocol; on a CPU each pass takes most of an hour). A pass of one chosen policy, run by hand,
`prunepilot prune CONFIG --policy results/bench/<name>/policies/<run>.json --out results/bench/<name>/final/<run>`,
lands in `final/<run>/`; this tool tables every such folder into `final/table.{csv,md}` (the columns of the
bench's `runs.csv`), each policy's search score beside what the pass made of it. Latencies are as each pass
timed them; where `python -m bench.latency_forms FOLDER` has re-timed the passes in one process, its
as-deployed speed-ups are joined in, one column pair per thread count.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from bench.comparison import final_pass_row
from pruning.checkpoint import atomic_write_text
from search.report import markdown_table, write_csv

RUN_NAME = re.compile(r"^(?P<method>.+)-m(?P<target>\d+)-s(?P<seed>\d+)$")
LATENCY_FORMS = re.compile(r"^latency_forms-t(?P<threads>\d+)\.csv$")


def pass_row(run: Path) -> dict:
    """One final pass: where its policy came from, its search score, and the pass's own measurements."""
    policy = json.loads((run / "policy.json").read_text()).get("meta", {})
    name = RUN_NAME.match(run.name)
    row = {"run": run.name, "method": name["method"] if name else run.name,
           "macs_target": policy.get("macs_target"), "seed": int(name["seed"]) if name else None,
           "search_val_accuracy": policy.get("accuracy")}
    final = json.loads((run / "summary.json").read_text())
    row.update(final_pass_row(final))
    row["latency_timing"] = "alternated" if "speedup_b64_range" in final else "one after the other"
    row["latency_threads"] = final.get("threads")
    return row


def retimed_speedups(folder: Path) -> pd.DataFrame | None:
    """Batch-64 as-deployed speed-ups re-timed by `bench.latency_forms`, per thread count: of the medians and, where
    the file has it, of the fastest passes, each with its fraction of the MACs reduction."""
    frames = []
    for path in sorted(folder.glob("latency_forms-t*.csv")):
        threads = LATENCY_FORMS.match(path.name)["threads"]
        forms = pd.read_csv(path)
        forms = forms[forms["batch"] == 64].set_index("run")
        columns = {f"retimed_t{threads}_speedup_b64": forms["deployed_speedup"],
                   f"retimed_t{threads}_speedup_over_macs_reduction_b64": forms["deployed_speedup_over_macs_reduction"]}
        if "deployed_speedup_fastest" in forms:  # files written before the fastest passes were recorded lack them
            columns[f"retimed_t{threads}_fastest_over_macs_reduction_b64"] = \
                forms["deployed_speedup_fastest_over_macs_reduction"]
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, axis=1) if frames else None


def final_table(folder: Path) -> pd.DataFrame:
    runs = sorted(p for p in folder.iterdir() if (p / "summary.json").is_file() and (p / "policy.json").is_file())
    if not runs:
        raise FileNotFoundError(f"{folder}: no finished final pass (*/summary.json with its policy.json)")
    frame = pd.DataFrame([pass_row(run) for run in runs]).sort_values(["macs_target", "method", "seed"])
    retimed = retimed_speedups(folder)
    return frame.join(retimed, on="run") if retimed is not None else frame


DISPLAY = ["run", "search_val_accuracy", "test_accuracy_oneshot", "test_accuracy", "drop_pp", "macs_ratio",
           "params_ratio", "speedup_b1", "speedup_b64", "speedup_over_macs_reduction_b64", "latency_timing",
           "latency_threads"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.final_passes", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a folder of prune outputs, e.g. results/bench/resnet20_search/final")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        sys.exit(f"error: {args.folder}: not a folder")
    try:
        frame = final_table(args.folder)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
    write_csv(frame, args.folder / "table.csv")
    shown = frame[DISPLAY + [c for c in frame.columns if c.startswith("retimed_")]]
    md = (f"# Final passes in `{args.folder}`\n\n"
          f"Each row is one `prunepilot prune --policy` of a chosen policy: its adaptive-BN validation accuracy in "
          f"the search, then the pass's test accuracy (one-shot + adaptive BN, and after the progressive pass), the "
          f"drop from the dense model, MACs and params as fractions of dense, and speed-ups as deployed: as each pass "
          f"timed them (`latency_timing`, at `latency_threads` torch threads), and as `bench.latency_forms` re-timed "
          f"them all in one process (`retimed_t<threads>`), where it has. Targets: drop ≤ 0.3 pp at 50% MACs and "
          f"≤ 1.5 pp at 25%; speed-up ≥ 0.8 x the MACs reduction at batch 64.\n\n{markdown_table(shown, '.4g')}\n\n"
          f"Regenerate: `python -m bench.final_passes {args.folder}`\n")
    atomic_write_text(args.folder / "table.md", md)
    print(md)


if __name__ == "__main__":
    main()
