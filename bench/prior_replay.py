"""Would a prior have screened better? Screens replayed on a pool of a model's recorded evaluations.

    python -m bench.prior_replay SOURCE_RUN CONFIG [overrides] --pool 'GLOB' [--pool 'GLOB' ...]
        [--also-source 'GLOB' ...] [--seeds 30] [--candidates 32] [--budget 50] [--bins 2,3,4] [--out FILE]

The pool is every distinct completed policy in the evaluations CSVs the globs match (searches on CONFIG's
model, say the ResNet-56 searches a transfer bench kept). A replay picks `budget` of them one at a time:
each pick draws `candidates` unpicked pool policies at random and takes the one the strategy's screen
rates best by expected improvement; the policy's recorded reward is its score. The strategies:

- `random`: the first candidate (no screen);
- `target`: this model's own reward model, as a search without a prior (the first `agent.screen_after`
  picks unscreened);
- `prior-B`: the prior of SOURCE_RUN's evaluations alone, in B depth bins (agents/transfer_prior.py);
- `rgpe-B`: the prior and this model's model, ranking-weighted, as `search --prior` screens.

`--also-source` pools more searches of the source model into the prior (run folders, or a bench's
`evaluations/<run>.csv`). Each prior is fitted once and also reported by the Spearman correlation of its
mean with the pool's recorded rewards.

It writes the mean best accuracy after 10, 25 and `budget` picks over the seeds (and the best reward). The pool holds
policies real searches chose to send, better than an agent's raw candidates, so every figure here is above
what a search reaches: it compares screens with one another, it does not predict a search.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from agents.screening import RewardModel, expected_improvement
from agents.transfer_prior import Prior, SourceRewards, TransferredRewardModel, depth_bin_features
from bench.common import load_run
from pruning.checkpoint import atomic_write_text
from pruning.errors import UserError
from pruning.policy import SparsityPolicy, unit_profile
from pruning.units import UnitGraph, configured_units
from search.report import markdown_table, write_csv
from search.review import completed_evaluations, policy_of_row, ratio_column

CHECKPOINTS = (10, 25)
"""Picks after which the best so far is reported, where fewer than the budget (and after the whole budget)."""


def checkpoints(budget: int) -> list[int]:
    return [at for at in CHECKPOINTS if at < budget] + [budget]


class PriorOnlyModel(TransferredRewardModel):
    """The prior alone: this model's scored policies only set the reward scale."""

    def _weigh(self) -> tuple[float, float]:
        return 1.0, 0.0


def recorded_pool(patterns: list[str], graph: UnitGraph, round_to: int) -> pd.DataFrame:
    """Distinct completed policies of the matched CSVs (first record of each), with their policies (`policy`)."""
    files = sorted({Path(path) for pattern in patterns for path in glob.glob(pattern)})
    if not files:
        raise UserError(f"--pool {' '.join(patterns)}: no evaluations CSV matches")
    columns = [ratio_column(u.name) for u in graph.units]
    frames = []
    for path in files:
        frames.append(completed_evaluations(path, ["reward", "accuracy", *columns],
                                            "the evaluations of a search on this config's model")
                      [["reward", "accuracy", *columns]])
    pool = pd.concat(frames, ignore_index=True)
    pool["policy"] = [policy_of_row(row, graph) for _, row in pool.iterrows()]
    pool["key"] = [p.key(graph, round_to) for p in pool["policy"]]
    return pool.drop_duplicates("key").reset_index(drop=True)


def also_sources(source: str, patterns: list[str]) -> list[str]:
    """The paths the `--also-source` globs match, each once and none the positional source: a search counted
    twice would weigh its policies double in the prior."""
    seen, paths = {Path(source).resolve()}, []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise UserError(f"--also-source {pattern}: nothing matches (expected run folders or a bench's "
                            f"evaluations/<run>.csv)")
        for path in matched:
            if Path(path).resolve() not in seen:
                seen.add(Path(path).resolve())
                paths.append(path)
    return paths


def screen_model(strategy: str, priors: dict[int, Prior], graph: UnitGraph, screen_after: int,
                 seed: int) -> RewardModel | None:
    """The reward model a strategy screens with (None: no screen); `priors` by depth bins."""
    if strategy == "random":
        return None
    if strategy == "target":
        return RewardModel(len(graph.units), min_points=screen_after, seed=seed)
    kind, _, bins = strategy.partition("-")
    model = {"prior": PriorOnlyModel, "rgpe": TransferredRewardModel}[kind]
    return model(len(graph.units), priors[int(bins)], list(unit_profile(graph).values()),
                 min_points=screen_after, seed=seed)


def fitted_priors(source: SourceRewards, graph: UnitGraph, bins: list[int]) -> dict[int, Prior]:
    """One prior per depth-bin count, fitted once: its process does not depend on the replay's seed (no
    optimiser restarts), and a pooled source of thousands of points takes minutes to fit."""
    return {b: source.prior_for(graph, 0, b) for b in bins}


def prior_rank_correlations(priors: dict[int, Prior], pool: pd.DataFrame, graph: UnitGraph) -> dict[int, float]:
    """Spearman correlation of each prior's mean with the pool's recorded rewards: how well it ranks them all."""
    ratios, profile = np.stack([p.vector(graph) for p in pool["policy"]]), list(unit_profile(graph).values())
    correlations = {}
    for bins, prior in priors.items():
        mean, _ = prior.predict(depth_bin_features(ratios, profile, prior.kinds, bins))
        correlations[bins] = float(pd.Series(mean).corr(pool["reward"], method="spearman"))
    return correlations


def replay(pool: pd.DataFrame, model: RewardModel | None, graph: UnitGraph, round_to: int, budget: int,
           candidates: int, seed: int) -> np.ndarray:
    """The pool indices one screened replay picks, in order."""
    rng = np.random.default_rng(seed)
    inputs = None if model is None else np.stack([model.inputs(p, graph, round_to) for p in pool["policy"]])
    left, picked = list(range(len(pool))), []
    for _ in range(budget):
        drawn = rng.choice(len(left), size=min(candidates, len(left)), replace=False)
        choice = int(drawn[0])
        if model is not None and model.ready:
            mean, std = model.predict(inputs[[left[i] for i in drawn]])
            choice = int(drawn[int(np.argmax(expected_improvement(mean, std, model.best)))])
        index = left.pop(choice)
        picked.append(index)
        if model is not None:
            model.add(inputs[index], float(pool["reward"].iloc[index]))
    return np.array(picked)


def run_replays(pool: pd.DataFrame, priors: dict[int, Prior], graph: UnitGraph, round_to: int,
                strategies: list[str], seeds: int, budget: int, candidates: int, screen_after: int) -> pd.DataFrame:
    """One row per (strategy, seed): the best reward and its accuracy after each checkpoint."""
    rows = []
    for strategy in strategies:
        for seed in range(seeds):
            model = screen_model(strategy, priors, graph, screen_after, seed)
            picked = pool.iloc[replay(pool, model, graph, round_to, budget, candidates, seed)].reset_index(drop=True)
            row = {"strategy": strategy, "seed": seed}
            for at in checkpoints(budget):
                best = picked.iloc[:at]["reward"].idxmax()
                row[f"reward@{at}"], row[f"accuracy@{at}"] = picked["reward"][best], picked["accuracy"][best]
            rows.append(row)
        print(f"{strategy}: done", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    means = frame.drop(columns="seed").groupby("strategy", sort=False).mean()
    return pd.DataFrame({"strategy": means.index, **{f"best val acc % after {at}": (100 * means[f"accuracy@{at}"]).round(2)
                                                      for at in checkpoints(budget)},
                         f"best reward after {budget}": means[f"reward@{budget}"].round(4)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prior_replay", description=__doc__.split("\n")[0])
    p.add_argument("source", help="the source search's run folder (evaluations.csv, best_policy.json)")
    p.add_argument("config", help="config of the pool's model (overrides follow)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--pool", action="append", required=True, help="glob of the pool's evaluations CSVs (repeatable)")
    p.add_argument("--also-source", action="append", default=[],
                   help="glob of more source searches pooled into the prior: run folders or a bench's "
                        "evaluations/<run>.csv (repeatable)")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--candidates", type=int, default=32, help="pool policies drawn per pick (agent.candidates)")
    p.add_argument("--budget", type=int, default=50, help="picks per replay")
    p.add_argument("--bins", default="2,3,4", help="depth bins of the prior strategies, comma-separated")
    p.add_argument("--out", default=None, help="Markdown file to write (and a CSV beside it); default: print only")
    args = p.parse_intermixed_args(argv)
    try:
        for name in ("seeds", "candidates", "budget"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name}: expected at least 1, got {getattr(args, name)}")
        try:
            bins = [int(b) for b in args.bins.split(",") if b]
        except ValueError:
            raise UserError(f"--bins: expected comma-separated whole numbers, got {args.bins!r}") from None
        source = SourceRewards.load(args.source, "source")
        also = [SourceRewards.load(path, "--also-source") for path in also_sources(args.source, args.also_source)]
        source = SourceRewards.pooled([source, *also])
        cfg, data, base = load_run(args.config, args.overrides)
        graph = configured_units(base.model, data.input_shape, cfg.prune)
        pool = recorded_pool(args.pool, graph, cfg.prune.round_to)
        if len(pool) < args.budget + args.candidates:
            raise UserError(f"--pool: {len(pool)} distinct policies, fewer than --budget + --candidates "
                            f"({args.budget + args.candidates})")
        strategies = ["random", "target", *(f"{kind}-{b}" for b in bins for kind in ("prior", "rgpe"))]
        priors = fitted_priors(source, graph, bins)
        correlations = prior_rank_correlations(priors, pool, graph)
        frame = run_replays(pool, priors, graph, cfg.prune.round_to, strategies, args.seeds, args.budget,
                            args.candidates, cfg.agent.screen_after)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m bench.prior_replay", args.source, args.config, *args.overrides,
                        *(f"--pool '{g}'" for g in args.pool), *(f"--also-source '{g}'" for g in args.also_source),
                        f"--seeds {args.seeds}",
                        f"--candidates {args.candidates}", f"--budget {args.budget}", f"--bins {args.bins}",
                        *([f"--out {args.out}"] if args.out else [])])
    text = (f"# Screens replayed on {len(pool)} recorded policies of {cfg.model.name}\n\n`{command}`\n\n"
            f"Each pick takes the best of {args.candidates} random unpicked pool policies by the strategy's screen; "
            f"means over {args.seeds} seeds. Prior: {len(source.rewards)} evaluations of {1 + len(also)} source "
            f"search(es) ({args.source}{' and --also-source' if also else ''}). The pool "
            f"holds policies searches chose to send, so these figures compare screens; they are not a search's.\n\n"
            f"{markdown_table(summary_table(frame, args.budget))}\n\n"
            f"Spearman correlation of the prior's mean with the pool's rewards: "
            f"{', '.join(f'{b} bins {r:.3f}' for b, r in correlations.items())}.\n")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame.round(6), out.with_suffix(".csv"))
        atomic_write_text(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
