"""NCHW vs channels-last throughput of one 3x3 convolution across channel counts, on this machine.

Why latency is timed channels-last on a CPU (`pruning.inference.timing_form`): oneDNN runs some
channel counts far below their channels-last speed in NCHW, so pruning to or from such a count moves
latency by more than its MACs. This sweep shows where, for the spatial sizes of a model's stages.
Writes `results/bench/conv_layouts-t<threads>.{csv,md}`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pruning.checkpoint import atomic_write_text
from pruning.cost import time_forward
from pruning.runtime import set_threads
from search.report import markdown_table, write_csv


def sweep(sizes: list[int], channels: list[int], batch: int, repeats: int, rounds: int) -> pd.DataFrame:
    """One row per (size, channels): median ms and GMAC/s of a cin = cout 3x3 conv in each layout."""
    rows = []
    for hw in sizes:
        for c in channels:
            conv = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
            last = copy.deepcopy(conv).to(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
            for _ in range(rounds):  # alternate, so load drift falls on both layouts alike; NCHW input to both
                times["nchw"].append(time_forward(conv, (c, hw, hw), batch, repeats, warmup=3).median_ms)
                times["channels_last"].append(time_forward(last, (c, hw, hw), batch, repeats, warmup=3).median_ms)
            gmacs = batch * c * c * 9 * hw * hw / 1e9
            row = {"size": hw, "channels": c}
            for layout, values in times.items():
                ms = statistics.median(values)
                row.update({f"{layout}_ms": ms, f"{layout}_gmac_per_s": gmacs / ms * 1000})
            row["channels_last_speedup"] = row["nchw_ms"] / row["channels_last_ms"]
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.conv_layouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="28,14,7", help="spatial sizes (H = W), comma-separated")
    p.add_argument("--channels", default="4,8,12,16,20,24,32,40,48,64", help="channel counts, comma-separated")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="timed passes per round (>= 1)")
    p.add_argument("--rounds", type=int, default=3, help="alternation rounds (>= 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="folder for the table")
    args = p.parse_args(argv)
    try:
        sizes = [int(v) for v in args.sizes.split(",") if v]
        channels = [int(v) for v in args.channels.split(",") if v]
    except ValueError:
        sys.exit(f"error: --sizes and --channels: expected comma-separated integers (got {args.sizes!r}, "
                 f"{args.channels!r})")
    if not sizes or not channels or min(sizes + channels) < 1 or min(args.batch, args.repeats, args.rounds) < 1 or (
            args.threads is not None and args.threads < 1):
        sys.exit("error: --sizes, --channels, --batch, --repeats, --rounds and --threads must be positive")
    threads = set_threads(args.threads)
    frame = sweep(sizes, channels, args.batch, args.repeats, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"conv_layouts-t{threads}"
    write_csv(frame, stem.with_suffix(".csv"))
    command = " ".join(["python -m bench.conv_layouts", *(argv if argv is not None else sys.argv[1:])])
    md = (f"# 3x3 convolution, NCHW vs channels-last, batch {args.batch}, {threads} thread(s), torch "
          f"{torch.__version__}\n\n{markdown_table(frame, '.3g')}\n\nRegenerate: `{command}`\n")
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
