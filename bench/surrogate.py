"""Replay searchers on a surrogate of a benchmark's recorded evaluations: seconds per search, not an hour.

    python -m bench.surrogate RESULTS_FOLDER --target 0.25 [--methods random,tpe,ddpg] [--seeds 8]
                              [--variant NAME=key:value,key:value ...] [--label LABEL]

Fits a Gaussian process (Matern 5/2 with one length scale per unit, plus white noise) to every
COMPLETE evaluation a benchmark recorded at one MACs target (per-unit ratios -> adaptive-BN
validation accuracy), then runs each searcher against it through the real `LayerPruningEnv` (same
budget clamp, rounding and cache) for the benchmark's budget. A variant is DDPG with agent settings
changed (`--variant ddpg-exec=learn_executed_action:true,noise_decay:0.98`). This screens agent
changes before real evaluations are paid for; its figures are a surrogate's, never the benchmark's.
Writes `surrogate-<target>.{csv,md}` (with --label, `surrogate-<target>-<label>.*`) into RESULTS_FOLDER.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.model_selection import KFold, cross_val_score

from agents.agent import Evaluation, PruningAgent
from agents.baselines import random_search
from bench.comparison import target_tag
from envs.factory import env_kwargs
from envs.layer_pruning import LayerPruningEnv
from pruning.baseline import architecture, build_from_arch
from pruning.checkpoint import atomic_write_text
from pruning.config import AgentConfig, RunConfig, format_errors
from pruning.data import load_data
from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from pruning.runtime import set_threads
from pruning.units import UnitGraph, configured_units
from search.local import tpe_search
from search.report import markdown_table, write_csv
from search.review import ratio_column


@dataclass
class SurrogateResult:
    accuracy: float
    macs: float
    macs_ratio: float


class SurrogateEvaluator:
    """Predicted accuracy of a policy from its per-unit ratios; MACs from the analytic cost model."""

    def __init__(self, graph: UnitGraph, gp: GaussianProcessRegressor, round_to: int):
        self.graph, self.gp, self.round_to = graph, gp, round_to

    def evaluate(self, policy: SparsityPolicy) -> SurrogateResult:
        macs = self.graph.macs(policy.kept(self.graph, self.round_to))
        accuracy = float(self.gp.predict(policy.vector(self.graph)[None])[0])
        return SurrogateResult(accuracy, macs, macs / self.graph.dense_macs)


def recorded_evaluations(folder: Path, target: float) -> pd.DataFrame:
    """Every COMPLETE evaluation at `target`: committed copies (evaluations/) and run folders (runs/), once each."""
    tag = f"-{target_tag(target)}-"
    files = {p.parent.name: p for p in sorted((folder / "runs").glob(f"*{tag}*/evaluations.csv"))}
    files.update({p.stem: p for p in sorted((folder / "evaluations").glob(f"*{tag}*.csv"))})
    if not files:
        raise UserError(f"{folder}: no recorded evaluations at MACs target {target} (expected runs/*{tag}*/evaluations.csv "
                        "or evaluations/*.csv)")
    frame = pd.concat([pd.read_csv(p).assign(run=name) for name, p in files.items()], ignore_index=True)
    return frame[frame["state"] == "COMPLETE"].reset_index(drop=True)


def fit_surrogate(frame: pd.DataFrame, graph: UnitGraph, seed: int = 0) -> tuple[GaussianProcessRegressor, float]:
    """The fitted GP and its 5-fold cross-validated R^2 (how far to trust it)."""
    columns = [ratio_column(name) for name in graph.names]
    missing = [c for c in columns if c not in frame]
    if missing:
        raise UserError(f"recorded evaluations lack the columns {missing[:3]}: they were made on another model")
    x, y = frame[columns].to_numpy(float), frame["accuracy"].to_numpy(float)

    def gp() -> GaussianProcessRegressor:
        kernel = ConstantKernel() * Matern(length_scale=np.ones(len(columns)), nu=2.5) + WhiteKernel()
        return GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # length scales at their bound: a unit the accuracy barely depends on
        r2 = float(cross_val_score(gp(), x, y, cv=KFold(5, shuffle=True, random_state=seed), scoring="r2").mean())
        return gp().fit(x, y), r2


def parse_variants(texts: list[str]) -> dict[str, dict]:
    """`name=key:value,key:value` -> {name: {key: value}} (values read as YAML)."""
    variants = {}
    for text in texts:
        name, _, settings = text.partition("=")
        if not name or not settings:
            raise UserError(f"--variant: expected NAME=key:value[,key:value], got {text!r}")
        pairs = [item.partition(":") for item in settings.split(",")]
        if any(not key or not sep for key, sep, _ in pairs):
            raise UserError(f"--variant {name}: every setting needs key:value, got {settings!r}")
        variants[name] = {key.strip(): yaml.safe_load(value) for key, _, value in pairs}
    return variants


def run_searcher(method: str, env: LayerPruningEnv, budget: int, seed: int, agent_cfg: AgentConfig) -> list[Evaluation]:
    if method == "random":
        return random_search(env, budget, seed)
    if method == "tpe":
        return tpe_search(env, budget, seed, lambda _: None)
    return PruningAgent.create(agent_cfg, env, seed).learn(env, budget)


def agent_config(cfg: RunConfig, method: str, variants: dict[str, dict]) -> AgentConfig:
    """The config's agent section as DDPG, with a variant's settings on top (unused by random and tpe)."""
    if method not in ("random", "tpe", "ddpg") and method not in variants:
        raise UserError(f"--methods: {method!r} is neither random, tpe, ddpg nor a --variant name")
    try:
        return AgentConfig.model_validate({**cfg.agent.model_dump(), "name": "ddpg", **variants.get(method, {})})
    except ValidationError as exc:
        raise UserError(format_errors(exc, f"--variant {method}")) from None


def screen(folder: Path, target: float, methods: list[str], seeds: int,
           variants: dict[str, dict]) -> tuple[pd.DataFrame, float, int]:
    """Best surrogate accuracy per (method, seed), the surrogate's R^2 and how many evaluations it was fitted on."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{config_file}: not found; RESULTS_FOLDER must be a `prunepilot bench` results folder")
    cfg = RunConfig.model_validate(json.loads(config_file.read_text()))
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    graph = configured_units(build_from_arch(architecture(cfg, data)), data.input_shape, cfg.prune)
    agents = {method: agent_config(cfg, method, variants) for method in methods}  # bad input fails before the fit
    recorded = recorded_evaluations(folder, target)
    gp, r2 = fit_surrogate(recorded, graph)
    rows = []
    for method, agent_cfg in agents.items():
        for seed in range(seeds):
            env = LayerPruningEnv(graph, SurrogateEvaluator(graph, gp, cfg.prune.round_to),
                                  **{**env_kwargs(cfg), "macs_target": target})
            start = time.perf_counter()
            accuracies = np.array([e.accuracy for e in run_searcher(method, env, cfg.bench.evaluations, seed, agent_cfg)])
            rows.append({"method": method, "seed": seed, "evaluations": len(accuracies),
                         "best_accuracy": accuracies.max(), "mean_last_50": accuracies[-50:].mean(),
                         "seconds": time.perf_counter() - start})
            print(f"{method} seed {seed}: best {accuracies.max():.4f}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows), r2, len(recorded)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.surrogate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a bench results folder, e.g. results/bench/resnet20")
    p.add_argument("--target", type=float, required=True, help="MACs target whose evaluations to fit, e.g. 0.25")
    p.add_argument("--methods", default="random,tpe,ddpg", help="comma-separated: random, tpe, ddpg, variant names")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 per method (N >= 1)")
    p.add_argument("--variant", action="append", default=[], help="NAME=key:value,... (agent settings)")
    p.add_argument("--label", default="", help="written as surrogate-<target>-LABEL.*, so screens do not overwrite another")
    args = p.parse_args(argv)
    if args.seeds < 1:
        sys.exit(f"error: --seeds: expected at least 1, got {args.seeds}")
    if args.label and not args.label.replace("-", "").replace("_", "").isalnum():
        sys.exit(f"error: --label: expected letters, digits, - or _, got {args.label!r}")
    set_threads(1)  # a search here is thousands of tiny forward passes: one thread each, like the benchmark's runs
    try:
        variants = parse_variants(args.variant)
        frame, r2, fitted = screen(args.folder, args.target, [m for m in args.methods.split(",") if m], args.seeds,
                                   variants)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    command = " ".join(["python -m bench.surrogate", str(args.folder), f"--target {args.target}",
                        f"--methods {args.methods}", f"--seeds {args.seeds}", *(f"--variant {v}" for v in args.variant),
                        *([f"--label {args.label}"] if args.label else [])])
    print(write_report(args.folder, args.target, args.label, frame, r2, fitted, variants, command))


def write_report(folder: Path, target: float, label: str, frame: pd.DataFrame, r2: float, fitted: int,
                 variants: dict[str, dict], command: str) -> str:
    """Write `surrogate-<target>[-label].{csv,md}` into `folder`; return the Markdown."""
    stats = frame.groupby("method", sort=False)["best_accuracy"].agg(["mean", "std", "count"]).reset_index()
    table = pd.DataFrame({"method": stats["method"], "seeds": stats["count"],
                          "best surrogate val acc %": [f"{100 * m:.2f}" + ("" if pd.isna(s) else f" ± {100 * s:.2f}")
                                                       for m, s in zip(stats["mean"], stats["std"])]})
    settings = "; ".join(f"{name}: {json.dumps(v)}" for name, v in variants.items()) or "none"
    screened = [name for name, v in variants.items() if int(v.get("candidates", 1)) > 1]
    caveat = (f" **{', '.join(screened)} screen(s) proposals with a Gaussian process of their own: on a surrogate "
              f"that is itself a Gaussian process, the screen models the truth's own kind of function, so these "
              f"figures flatter it; judge it on the real evaluator.**" if screened else "")
    md = (f"# Searchers on a surrogate of `{folder}` at {100 * target:.0f}% MACs\n\n"
          f"A Gaussian process fitted to {fitted} recorded evaluations (5-fold CV R² **{r2:.3f}**) stands in for "
          f"adaptive-BN validation accuracy; each searcher has the benchmark's budget. Surrogate figures, for "
          f"screening only. Variants: {settings}.{caveat}\n\n{markdown_table(table)}\n\nRegenerate: `{command}`\n")
    tag = target_tag(target) + (f"-{label}" if label else "")
    write_csv(frame, folder / f"surrogate-{tag}.csv")
    atomic_write_text(folder / f"surrogate-{tag}.md", md)
    return md


if __name__ == "__main__":
    main()
