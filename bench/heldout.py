"""Do a benchmark's best search scores hold on validation images that no search scored?

A search scores every policy on the first `eval.val_limit` validation images and keeps its best. The best of
200 such scores sits further above the policy's real accuracy than the best of 50 (it is picked among more
draws of the same noise), which favours the longer search in a comparison of bests. For every evaluations CSV
of a benchmark folder, this takes the `--top` policies by reward, scores each again after the same adaptive BN
on the search's own images (a replay, which should give the recorded accuracy) and on the rest of the
validation split, and tables per run: the search's best score, the held-out score of that same policy, and the
mean held-out score of the top policies. Runs whose names differ only by a seed suffix (`-sN`) are averaged
into one group; with `warm-start` and `from-scratch` groups (a transfer's `reuse/evaluations/`) the transfer
target is also read on held-out rewards. Writes `<name>.{csv,md}` into the folder.

    python -m bench.heldout results/bench/resnet20_transfer_m50_exec_w10_spread configs/bench/resnet20_search.yaml \
        model.name=resnet56 train.epochs=10 model.checkpoint=results/bench/baselines/resnet56-fmnist-dense.pt \
        --evaluations 'reuse/evaluations/*.csv'
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.common import load_run
from bench.transfer import level_98pct
from envs.factory import build_env
from pruning.checkpoint import atomic_write_text
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.units import UnitGraph, configured_units
from search.report import markdown_table, write_csv
from search.review import policy_of_row, ratio_column

SEED_SUFFIX = re.compile(r"-s\d+$")


def top_policies(path: Path, graph: UnitGraph, top: int) -> pd.DataFrame:
    """The `top` completed evaluations of one CSV by reward, best first, with their policies (`policy` column)."""
    table = pd.read_csv(path)
    missing = [u.name for u in graph.units if ratio_column(u.name) not in table.columns]
    if missing or "reward" not in table.columns:
        what = f"no ratio column for unit(s) {missing[:3]}" if missing else "no reward column"
        raise UserError(f"{path}: {what}; expected the evaluations of a search on this config's model")
    done = table[table["state"] == "COMPLETE"] if "state" in table.columns else table
    if done.empty:
        raise UserError(f"{path}: no completed evaluation")
    best = done.sort_values("reward", ascending=False, kind="stable").head(top).reset_index(drop=True)
    best["policy"] = [policy_of_row(row, graph) for _, row in best.iterrows()]
    return best


def held_out_images(evaluator: Evaluator, x_val: torch.Tensor, y_val: torch.Tensor, val_limit: int | None) -> Evaluator:
    """An evaluator on the validation images after the search's first `val_limit`."""
    if val_limit is None or val_limit >= len(y_val):
        raise UserError(f"eval.val_limit: the searches scored all {len(y_val)} validation images "
                        f"(val_limit {val_limit}); no held-out images are left to score on")
    return evaluator.on_images(x_val[val_limit:], y_val[val_limit:])


def rescore(folder: Path, config: str, overrides: list[str], patterns: list[str], top: int
            ) -> tuple[pd.DataFrame, dict]:
    """(one row per re-scored policy; the image counts and dense accuracies on both image sets)."""
    files = sorted({path for pattern in patterns for path in folder.glob(pattern)})
    if not files:
        raise UserError(f"{folder}/{' or '.join(patterns)}: no evaluations CSV matches; run the benchmark first")
    if top < 1:
        raise UserError(f"--top: must be at least 1, got {top}")
    cfg, data, base = load_run(config, overrides)
    graph = configured_units(base.model, data.input_shape, cfg.prune)
    settings = EvalSettings.from_config(cfg)
    searched = Evaluator(base.model, data, graph, settings)
    held = held_out_images(searched, data.x_val, data.y_val, settings.val_limit)
    env = build_env(cfg, base.model, data, graph, evaluator=searched)
    rows = []
    for path in files:
        for rank, row in top_policies(path, graph, top).iterrows():
            replay, fresh = searched.evaluate(row["policy"]), held.evaluate(row["policy"])
            rows.append({"run": path.stem, "group": SEED_SUFFIX.sub("", path.stem), "rank": rank + 1,
                         "evaluation": int(row.get("evaluation", rank)), "macs_ratio": replay.macs_ratio,
                         "search_accuracy": float(row["accuracy"]), "replayed_accuracy": replay.accuracy,
                         "heldout_accuracy": fresh.accuracy, "search_reward": float(row["reward"]),
                         "heldout_reward": env.reward(fresh)})
    images = {"search_images": len(searched.y_val), "heldout_images": len(held.y_val),
              "dense_search_accuracy": searched.dense_accuracy, "dense_heldout_accuracy": held.dense_accuracy}
    return pd.DataFrame(rows), images


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's chosen policy on both image sets, and the mean held-out accuracy of its top policies."""
    chosen = frame[frame["rank"] == 1].set_index("run")
    top_mean = frame.groupby("run")["heldout_accuracy"].mean()
    table = chosen[["group", "search_accuracy", "heldout_accuracy", "search_reward", "heldout_reward"]].copy()
    table["drop_pp"] = 100 * (table["search_accuracy"] - table["heldout_accuracy"])
    table["top_heldout_mean"] = top_mean
    table["replay_matches"] = frame.assign(same=(frame["replayed_accuracy"] - frame["search_accuracy"]).abs() < 1e-9
                                           ).groupby("run")["same"].all()
    return table.reset_index()


def per_group(runs: pd.DataFrame) -> pd.DataFrame:
    """Means over the runs of each group (the seeds of one method, or of one kind of transfer search)."""
    return (runs.groupby("group", sort=False)
            .agg(runs=("run", "count"), search_accuracy=("search_accuracy", "mean"),
                 heldout_accuracy=("heldout_accuracy", "mean"), drop_pp=("drop_pp", "mean"),
                 top_heldout_mean=("top_heldout_mean", "mean"), search_reward=("search_reward", "mean"),
                 heldout_reward=("heldout_reward", "mean"))
            .reset_index())


def transfer_reading(groups: pd.DataFrame) -> dict | None:
    """The transfer target (warm mean >= 98% of the from-scratch mean) on search rewards and on held-out ones."""
    means = groups.set_index("group")
    if not {"warm-start", "from-scratch"} <= set(means.index):
        return None
    reading = {}
    for column in ("search_reward", "heldout_reward"):
        warm, scratch = float(means.loc["warm-start", column]), float(means.loc["from-scratch", column])
        level = level_98pct(scratch)
        reading[column] = {"warm_mean": warm, "scratch_mean": scratch, "level_98pct": level, "met": warm >= level}
    return reading


def report(folder: str, command: str, frame: pd.DataFrame, images: dict) -> str:
    runs = per_run(frame)
    groups = per_group(runs)
    lines = [f"# Held-out re-score of {folder}", "", f"`{command}`", "",
             f"Each run's top policies by reward, scored again after the same adaptive BN: on the search's "
             f"{images['search_images']} validation images (a replay) and on the other {images['heldout_images']} "
             f"validation images, which no search scored. Dense model: {100 * images['dense_search_accuracy']:.2f}% "
             f"on the search's images, {100 * images['dense_heldout_accuracy']:.2f}% on the held-out ones.", "",
             "## By group (mean over its runs)", "", markdown_table(groups.round(4)), ""]
    reading = transfer_reading(groups)
    if reading is not None:
        lines += ["## The transfer target on both image sets", ""]
        for column, label in (("search_reward", "search images"), ("heldout_reward", "held-out images")):
            r = reading[column]
            lines.append(f"- {label}: warm-start mean reward {r['warm_mean']:.4f} vs from-scratch mean "
                         f"{r['scratch_mean']:.4f} (98% level {r['level_98pct']:.4f}) → "
                         f"**{'met' if r['met'] else 'NOT met'}**")
        lines.append("")
    mismatched = runs.loc[~runs["replay_matches"], "run"].tolist()
    lines += ["## By run (its chosen policy, and the mean of its top policies on held-out images)", "",
              markdown_table(runs.round(4)), "",
              f"Replays that did not give the recorded accuracy: {', '.join(mismatched) if mismatched else 'none'}"
              " (another CPU type's kernels can move an accuracy by an image or two).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heldout", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a benchmark folder")
    p.add_argument("config", help="config of the searched model (overrides follow)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--evaluations", action="append", help="glob of evaluations CSVs inside the folder, may be "
                   "given more than once (default evaluations/*.csv)")
    p.add_argument("--top", type=int, default=5, help="policies per run to re-score, by reward (default 5)")
    p.add_argument("--name", default="heldout", help="output file stem inside the folder (default heldout)")
    args = p.parse_intermixed_args(argv)
    folder = Path(args.folder)
    patterns = args.evaluations or ["evaluations/*.csv"]
    try:
        frame, images = rescore(folder, args.config, args.overrides, patterns, args.top)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m bench.heldout", args.folder, args.config, *args.overrides,
                        *(f"--evaluations '{pattern}'" for pattern in patterns), f"--top {args.top}",
                        f"--name {args.name}"])
    text = report(args.folder, command, frame, images)
    write_csv(frame.round(6), folder / f"{args.name}.csv")
    atomic_write_text(folder / f"{args.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
