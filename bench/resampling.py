"""How well do a benchmark's searched policies move to another model? Resampling by unit kind vs by depth alone.

For every run of a benchmark at one MACs target (`runs/<method>-m<NN>-s<seed>/best_policy.json`), the
best policy is moved onto the config's model twice, each shifted onto the same MACs target and played
through the env's budget clamp: resampled kind by kind (`SparsityPolicy.resampled`, what `prunepilot
transfer --policy` does) and by relative depth alone (`resampled(by_kind=False)`). Each DDPG run's agent also
proposes its zero-shot policy. Uniform and `--random` random draws (through the same clamp) give the
scale. Writes `resampling-<model>-m<NN>.{csv,md}` into the benchmark folder.

    python -m bench.resampling results/bench/resnet20_search configs/bench/resnet20_search.yaml \
        --target 0.5 model.name=resnet56 train.epochs=10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from agents.agent import PruningAgent
from agents.baselines import uniform
from bench.common import load_run
from bench.comparison import target_tag
from envs.factory import build_env
from pruning.checkpoint import atomic_write_text
from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from pruning.units import configured_units
from search.report import markdown_table, write_csv
from search.reuse import move_policy


def compare(folder: Path, config: str, target: float, overrides: list[str],
            random_draws: int) -> tuple[pd.DataFrame, str]:
    """(one row per moved policy, reference or random draw; the target model's name)."""
    cfg, data, base = load_run(config, [*overrides, f"env.macs_target={target}"])
    graph = configured_units(base.model, data.input_shape, cfg.prune)
    env = build_env(cfg, base.model, data, graph)
    runs = sorted((folder / "runs").glob(f"*-{target_tag(target)}-s*/best_policy.json"))
    if not runs:
        raise UserError(f"{folder}/runs: no */best_policy.json at MACs target {target}; run the benchmark first")
    rows = []

    def score(method: str, run: str, how: str, policy: SparsityPolicy) -> None:
        result = env.evaluate(policy)
        rows.append({"method": method, "run": run, "how": how, "accuracy": result.accuracy,
                     "macs_ratio": result.macs_ratio, "reward": env.reward(result)})

    score("uniform", "-", "rule", uniform(graph, target, env.round_to, cfg.prune.max_ratio))
    for path in runs:
        run = path.parent.name
        method = run.split("-m")[0]
        source = SparsityPolicy.load(path)
        score(method, run, "by kind", move_policy(source, env, source=str(path)))
        score(method, run, "by depth", move_policy(source.resampled(graph, str(path), by_kind=False), env))
        if (path.parent / "agent.zip").is_file():
            score(method, run, "agent zero-shot",
                  PruningAgent.load(path.parent / "agent.zip", env).propose(env, deterministic=True)[0])
    rng = np.random.default_rng(cfg.seed)
    for draw in range(random_draws):
        score("random draw", str(draw), "random", env.play_ratios(list(rng.uniform(env.r_min, env.r_max,
                                                                                  env.n_units)))[0])
    return pd.DataFrame(rows), cfg.model.name


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max accuracy of each way of moving a policy (and of the references)."""
    return (frame.groupby("how", sort=False)["accuracy"].agg(["count", "mean", "min", "max"]).reset_index()
            .rename(columns={"count": "policies"}).round(4))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resampling", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a benchmark folder with runs/*/best_policy.json")
    p.add_argument("config", help="config of the model to move the policies to (overrides follow)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--target", type=float, required=True, help="MACs target of the source runs and of the moved policies")
    p.add_argument("--random", type=int, default=10, help="random draws for scale (default 10)")
    args = p.parse_intermixed_args(argv)
    try:
        frame, model = compare(Path(args.folder), args.config, args.target, args.overrides, args.random)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = f"resampling-{model}-{target_tag(args.target)}"
    write_csv(frame, Path(args.folder) / f"{name}.csv")
    text = (f"# Moving {args.folder}'s best policies to {model} at {100 * args.target:.0f}% MACs\n\n"
            f"`python -m bench.resampling {' '.join([args.folder, args.config, *args.overrides])} --target {args.target}"
            f" --random {args.random}`\n\nAdaptive-BN validation accuracy:\n\n{markdown_table(summary(frame))}\n\n"
            f"Every policy:\n\n{markdown_table(frame.round(4))}\n")
    atomic_write_text(Path(args.folder) / f"{name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
