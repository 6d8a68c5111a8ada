"""A finished search's own report: the evaluations table, its plots, the best policy against uniform, and
search_summary.json; the final pass appends its part to the section written here."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from agents.baselines import uniform
from envs.layer_pruning import LayerPruningEnv
from envs.rewards import describe_latency_penalty
from pruning.checkpoint import atomic_write_text
from pruning.config import RunConfig
from pruning.errors import UserError
from pruning.evaluate import EvalResult
from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph
from search.recording import EvaluationSink
from search.report import markdown_table, plot_lines, plot_unit_ratios, save_figure, write_json, write_table
from search.review import policy_of_row, shown_storage
from search.trial import latency_attr

log = logging.getLogger("prunepilot")


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
    save_figure(fig, path)


def uniform_beats(env: LayerPruningEnv, uniform_result: EvalResult, reward: float, what: str, advice: str) -> str:
    """Warn when the uniform rule at the same MACs target scores a higher reward than `what`: a short search or a
    policy from another model can lose to it, and the user would otherwise prune with the worse one unawares.
    Returns the comparison for the report ('' when uniform does not win)."""
    uniform_reward = env.reward(uniform_result)
    if uniform_reward <= reward:
        return ""
    said = (f"reward {reward:.4f} against uniform's {uniform_reward:.4f}, val acc {uniform_result.accuracy:.4f} at "
            f"{100 * uniform_result.macs_ratio:.1f}% MACs")
    log.warning("%s scores below the uniform policy at the same MACs target: %s; %s, or prune the uniform policy "
                "(prunepilot prune CONFIG prune.macs_target=%.2f)", what, said, advice, env.macs_target)
    return said


def latency_term(env: LayerPruningEnv) -> str:
    """How predicted latency enters the reward, for the report; empty when it does not."""
    if env.latency_weight == 0:
        return ""
    return (f"{describe_latency_penalty(env.latency_weight, env.latency_target)}, L the predicted latency ratio "
            f"(layer latency table at batch {env.latency_table.batch_size}, {env.latency_table.threads} thread(s))")


def best_evaluation(frame: pd.DataFrame) -> pd.Series:
    complete = frame[frame["state"] == "COMPLETE"]
    if complete.empty:
        raise UserError("search: no evaluation finished; see the Ray logs under the run folder's ray/ directory")
    return complete.loc[complete["reward"].idxmax()]


def write_search_report(cfg: RunConfig, env: LayerPruningEnv, graph: UnitGraph, sink: EvaluationSink, out: Path, *,
                        state: dict, backend: str, resumed: bool, wall: float, tune_seconds: float | None,
                        baseline: dict) -> tuple[SparsityPolicy, str]:
    """Close the study's recording and write what the search found into `out`: evaluations.csv, best_policy.json,
    the plots, search_summary.json, and report.md when no final pass follows. Returns the best policy and the
    report's search section (the final pass's report starts with it)."""
    sink.close()
    frame = write_table(sink.recorder.frame(), out, "evaluations")
    best_row = best_evaluation(frame)
    best = policy_of_row(best_row, graph, reward=float(best_row["reward"]), accuracy=float(best_row["accuracy"]),
                         macs_ratio=float(best_row["macs_ratio"]), searcher=cfg.search.searcher,
                         macs_target=env.macs_target)
    best.save(out / "best_policy.json")
    complete = frame[frame["state"] == "COMPLETE"].copy()
    complete["best_reward"] = complete["reward"].cummax()
    plot_lines(complete, "evaluation", ["reward", "best_reward"], out / "reward.png", "reward per evaluation")
    plot_accuracy_vs_macs(complete, out / "accuracy_vs_macs.png")
    uniform_policy = uniform(graph, env.macs_target, env.round_to, cfg.prune.max_ratio)
    plot_unit_ratios(graph.names, {"best": list(best.vector(graph)), "uniform": list(uniform_policy.vector(graph))},
                     out / "best_vs_uniform.png", f"{cfg.model.name}: best policy vs uniform at the same MACs")
    uniform_result = env.evaluate(uniform_policy)
    below_uniform = uniform_beats(env, uniform_result, float(best_row["reward"]),
                                  f"the search's best ({len(frame)} evaluations)", "search longer (search.evaluations)")
    failed = int((frame["state"] != "COMPLETE").sum())
    nodes = complete["node_id"].nunique() if "node_id" in complete else 1
    where = ("this process (no Ray)" if backend == "local" else
             f"{nodes} Ray node(s)" + (" (counted over every session of this resumed search)" if resumed else ""))
    log.info("search: %d evaluations (%d failed) in %.0fs on %s; best reward %.4f (val acc %.4f, %.1f%% MACs); "
             "uniform: val acc %.4f", len(frame), failed, wall, where, best_row["reward"], best_row["accuracy"],
             100 * best_row["macs_ratio"], uniform_result.accuracy)
    section = "\n".join([
        "", "## Search", "",
        f"Searcher **{cfg.search.searcher}** ({backend} backend), {len(frame)} evaluations in {wall:.0f} s of this "
        f"session on {where}; MACs target {env.macs_target:.2f}, reward `{env.reward_name}`{latency_term(env)}. "
        f"Optuna study `{state['study_name']}` in `{shown_storage(state['storage'])}` (`prunepilot dashboard {out}`).",
        "",
        markdown_table(pd.DataFrame([
            {"policy": "best found", "val accuracy (adaptive BN)": best_row["accuracy"],
             "MACs ratio": best_row["macs_ratio"], **latency_attr(env, best.kept(graph, env.round_to)),
             "reward": best_row["reward"]},
            {"policy": "uniform", "val accuracy (adaptive BN)": uniform_result.accuracy,
             "MACs ratio": uniform_result.macs_ratio, **latency_attr(env, uniform_result.kept),
             "reward": env.reward(uniform_result)}])), "",
        *([f"**The best policy found scores below the uniform policy** ({below_uniform}): search longer, or prune "
           f"the uniform policy with `prunepilot prune CONFIG prune.macs_target={env.macs_target:.2f}`.", ""]
          if below_uniform else []),
        "![reward](reward.png) ![accuracy vs MACs](accuracy_vs_macs.png) ![best vs uniform](best_vs_uniform.png)", ""])
    write_json({"evaluations": len(frame), "failed": failed, "wall_seconds": wall, "nodes": int(nodes),
                "best": best.to_dict(), "uniform_accuracy": uniform_result.accuracy,
                "uniform_reward": env.reward(uniform_result), "backend": backend, "tune_seconds": tune_seconds,
                "concurrency": cfg.search.concurrency if backend == "ray" else 1, "baseline": baseline},
               out / "search_summary.json")
    if not cfg.search.final_pass:
        atomic_write_text(out / "report.md", f"# Search report: {cfg.model.name} ({cfg.name})\n{section}")
    return best, section
