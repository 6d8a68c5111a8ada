"""`prunepilot search`: baseline -> search (local or Ray Tune) -> final progressive pass -> results/<run>/."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from agents.agent import Evaluation, PruningAgent
from agents.baselines import uniform
from envs.factory import build_env
from pruning.units import UnitGraph
from search.cli import run_folder
from search.jobs import baseline_of, final_pass, prepare, unit_graph
from search.local import check_searcher, run_local
from search.report import markdown_table, plot_lines, plot_unit_ratios, write_table

log = logging.getLogger("prunepilot")


class EvaluationLog:
    """Every evaluated policy as a row, plus a live progress line (done/total, best reward, ETA)."""

    def __init__(self, graph: UnitGraph, total: int, searcher: str, show_progress: bool):
        self.graph, self.searcher = graph, searcher
        self.rows: list[dict] = []
        self.best: Evaluation | None = None
        self.bar = tqdm(total=total, desc=f"search ({searcher})", unit="eval", disable=not show_progress)

    def add(self, evaluation: Evaluation) -> None:
        if self.best is None or evaluation.reward > self.best.reward:
            self.best = evaluation
        row = {"evaluation": len(self.rows), "searcher": self.searcher, "episode": evaluation.episode,
               "reward": evaluation.reward, "accuracy": evaluation.accuracy, "macs_ratio": evaluation.macs_ratio,
               **evaluation.extra}
        row.update({f"ratio:{name}": r for name, r in zip(self.graph.names, evaluation.policy.vector(self.graph))})
        self.rows.append(row)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best.reward:.4f}", acc=f"{self.best.accuracy:.4f}")

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        frame["best_reward"] = frame["reward"].cummax()
        return frame


def pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows not dominated in (higher accuracy, lower MACs ratio)."""
    ordered = frame.sort_values(["macs_ratio", "accuracy"], ascending=[True, False])
    front, best = [], -1.0
    for _, row in ordered.iterrows():
        if row["accuracy"] > best:
            front.append(row)
            best = row["accuracy"]
    return pd.DataFrame(front)


def plot_accuracy_vs_macs(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    front = pareto_front(frame)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(frame["macs_ratio"], frame["accuracy"], s=12, alpha=0.5, label="evaluated policies")
    ax.plot(front["macs_ratio"], front["accuracy"], color="C3", marker="o", label="Pareto front")
    ax.set_xlabel("fraction of dense MACs")
    ax.set_ylabel("validation accuracy (adaptive BN)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_job(args: argparse.Namespace) -> int:
    ctx = prepare(args)
    cfg = ctx.cfg
    check_searcher(cfg.search.searcher)
    backend = args.backend or cfg.search.backend
    out = run_folder(args, cfg.name)
    base = baseline_of(ctx)
    graph = unit_graph(ctx, base.model)
    env = build_env(cfg, base.model, ctx.data, graph)
    record = EvaluationLog(graph, cfg.search.evaluations, cfg.search.searcher, ctx.show_progress)
    start = time.perf_counter()
    if backend == "local":
        evaluations, agent = run_local(cfg, base.model, env, record.add)
    else:
        from search.ray_backend import run_ray  # imported only when used: Ray is heavy

        evaluations, agent = run_ray(ctx, base, graph, env, record.add, args, out)
    wall = time.perf_counter() - start
    record.bar.close()
    best = record.best
    out.mkdir(parents=True, exist_ok=True)
    frame = write_table(record.frame(), out, "evaluations")
    best.policy.meta.update(reward=best.reward, accuracy=best.accuracy, searcher=cfg.search.searcher)
    best.policy.save(out / "best_policy.json")
    if isinstance(agent, PruningAgent):
        agent.save(out / "agent", env)
    plot_lines(frame, "evaluation", ["reward", "best_reward"], out / "reward.png", "reward per evaluation")
    plot_accuracy_vs_macs(frame, out / "accuracy_vs_macs.png")
    uniform_policy = uniform(graph, env.macs_target, env.round_to, cfg.prune.max_ratio)
    plot_unit_ratios(graph.names, {"best": list(best.policy.vector(graph)), "uniform": list(uniform_policy.vector(graph))},
                     out / "best_vs_uniform.png", f"{cfg.model.name}: best policy vs uniform at the same MACs")
    uniform_result = env.evaluate(uniform_policy)
    log.info("search: %d evaluations in %.0fs; best reward %.4f (val acc %.4f, %.1f%% MACs); uniform: val acc %.4f",
             len(evaluations), wall, best.reward, best.accuracy, 100 * best.macs_ratio, uniform_result.accuracy)
    section = "\n".join([
        "", "## Search", "",
        f"Searcher **{cfg.search.searcher}** ({backend} backend), {len(evaluations)} evaluations in {wall:.0f} s; "
        f"MACs target {env.macs_target:.2f}, reward `{env.reward_name}`.", "",
        markdown_table(pd.DataFrame([
            {"policy": "best found", "val accuracy (adaptive BN)": best.accuracy, "MACs ratio": best.macs_ratio,
             "reward": best.reward},
            {"policy": "uniform", "val accuracy (adaptive BN)": uniform_result.accuracy,
             "MACs ratio": uniform_result.macs_ratio, "reward": env.reward(uniform_result)}])), "",
        "![reward](reward.png) ![accuracy vs MACs](accuracy_vs_macs.png) ![best vs uniform](best_vs_uniform.png)", ""])
    if cfg.search.final_pass:
        final_pass(ctx, base, graph, best.policy, out, extra_report=section)
    else:
        (out / "report.md").write_text(f"# Search report: {cfg.model.name} ({cfg.name})\n{section}")
    return 0
