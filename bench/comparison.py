"""The method comparison: every searcher and rule at the same budgets, per MACs target and seed.

Each (method, target, seed) is one `prunepilot search --backend local` run with the same config,
evaluation budget and final-pass budget; this module lays out the runs and turns their outputs into
the per-run table, the mean +- std table and the best-reward-vs-evaluations plot.

Run folders hold models, Optuna and agent files and are not committed; the bench folder keeps, beside
its tables, each finished run's evaluations and best policy. So a protocol split over machines and
sessions goes on from a fresh clone: a run whose folder is gone is tabled from the folder's own
runs.csv and plotted from its kept evaluations (`source` "recorded"), and only the runs in neither
are run again.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from agents.baselines import RULES  # noqa: E402
from agents.sb3_agents import BUILDERS  # noqa: E402
from bench.grid import Run  # noqa: E402
from pruning.checkpoint import atomic_copy  # noqa: E402
from pruning.config import RunConfig  # noqa: E402
from pruning.errors import UserError  # noqa: E402
from search.report import save_figure  # noqa: E402


def target_tag(target: float) -> str:
    return f"m{round(100 * target):02d}"


def run_name(method: str, target: float, seed: int) -> str:
    return f"{method}-{target_tag(target)}-s{seed}"


def grid_keys(cfg: RunConfig) -> list[tuple[str, float, int]]:
    """(method, target, seed) of every comparison run, seeds outermost so that a partial benchmark has whole seeds."""
    b = cfg.bench
    return [(m, t, s) for s in b.seeds for t in b.macs_targets for m in b.methods]


def method_searcher(cfg: RunConfig, method: str) -> str:
    """The search.searcher a method runs: its own name, or its variant's searcher."""
    variant = cfg.bench.variants.get(method)
    return variant.searcher if variant else method


def searcher_overrides(cfg: RunConfig, method: str) -> tuple[str, ...]:
    """The overrides that make a run search with `method`'s searcher: an agent searcher's agent.name too, so that a
    config naming another agent is overridden, not refused, for this method's runs."""
    searcher = method_searcher(cfg, method)
    return (f"search.searcher={searcher}", *((f"agent.name={searcher}",) if searcher in BUILDERS else ()))


def is_rl_method(cfg: RunConfig, method: str) -> bool:
    """Whether a method runs an RL agent (ddpg, td3, sac, ppo or a variant of one) and is judged as RL, not as a
    baseline (a variant marked `baseline: true` runs an agent's searcher but learns nothing)."""
    variant = cfg.bench.variants.get(method)
    return method_searcher(cfg, method) in BUILDERS and not (variant is not None and variant.baseline)


def comparison_runs(cfg: RunConfig, config: str, folder: Path, overrides: list[str]) -> list[Run]:
    """One run per `grid_keys` entry, in that order."""
    b = cfg.bench
    done_when = ("search_summary.json", "summary.json") if b.final_pass else ("search_summary.json",)
    runs = []
    for method, target, seed in grid_keys(cfg):
        name = run_name(method, target, seed)
        variant = b.variants[method].overrides if method in b.variants else []
        runs.append(Run(name, "search", config, folder / "runs" / name, (
            *overrides, *searcher_overrides(cfg, method), f"search.seed={seed}",
            f"env.macs_target={target}", f"search.evaluations={b.evaluations}",
            f"search.final_pass={str(b.final_pass).lower()}", "search.backend=local", "sweep.accuracy_floor=null",
            "threads=1", *variant), done_when=done_when))
    return runs


def run_row(run: Run, method: str, target: float, seed: int) -> dict | None:
    """One finished run as a table row (None while it has not finished)."""
    if not run.done:
        return None
    search = json.loads((run.out / "search_summary.json").read_text())
    meta = search["best"]["meta"]
    row = {"run": run.name, "method": method, "macs_target": target, "seed": seed, "evaluations": search["evaluations"],
           "search_seconds": search["wall_seconds"], "reward": meta["reward"], "val_accuracy": meta["accuracy"],
           "policy_macs_ratio": meta.get("macs_ratio"), "dense_digest": search.get("baseline", {}).get("digest"),
           "dense_val_accuracy": search.get("baseline", {}).get("val_accuracy")}
    final_file = run.out / "summary.json"
    if final_file.is_file():
        row.update(final_pass_row(json.loads(final_file.read_text())))
    return row


def final_pass_row(final: dict) -> dict:
    """The table columns of one final pass, from its `summary.json`."""
    dense, pruned = final["dense"], final["pruned"]
    return {
        "test_accuracy_oneshot": final["oneshot"]["test_accuracy"], "test_accuracy": pruned["test_accuracy"],
        "dense_test_accuracy": dense["test_accuracy"], "drop_pp": final["accuracy_drop_pp"],
        "macs_ratio": final["macs_ratio"], "params_ratio": final["params_ratio"],
        "dense_latency_b1_ms": dense["latency_b1_ms"], "latency_b1_ms": pruned["latency_b1_ms"],
        "dense_latency_b64_ms": dense["latency_b64_ms"], "latency_b64_ms": pruned["latency_b64_ms"],
        "speedup_b1": final["speedup_b1"], "speedup_b64": final["speedup_b64"],
        "speedup_over_macs_reduction_b64": final["speedup_b64"] * final["macs_ratio"],
        "device": final.get("device", "")}


KEPT_FILES = {"evaluations.csv": ("evaluations", ".csv"), "best_policy.json": ("policies", ".json")}
"""A run folder's file -> (sub-folder of the bench folder, suffix) under which it is kept as <run name><suffix>."""


def kept_path(folder: Path, run_name: str, file: str) -> Path:
    sub, suffix = KEPT_FILES[file]
    return folder / sub / f"{run_name}{suffix}"


def keep_run_files(folder: Path, runs: list[Run]) -> None:
    """Copy each finished run's evaluations and best policy beside the tables (they are small and committed)."""
    for run in runs:
        if not run.done:
            continue
        for file in KEPT_FILES:
            if (run.out / file).is_file():
                atomic_copy(run.out / file, kept_path(folder, run.name, file))


def recorded_rows(folder: Path, runs: list[Run]) -> pd.DataFrame:
    """Rows of the folder's earlier runs.csv for grid runs whose folders are not here (finished elsewhere)."""
    path = folder / "runs.csv"
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    absent = [run.name for run in runs if not run.done]
    rows = table[table["run"].isin(absent)].copy()
    rows["source"] = "recorded"
    return rows


def rows_outside_grid(folder: Path, runs: list[Run]) -> pd.DataFrame:
    """Rows of the folder's runs.csv for runs this grid does not name (a call with fewer methods, seeds or targets).

    runs.csv is the folder's record of every finished run: a narrower call keeps them, so that a later call (or a
    clone without the run folders) still tables them as recorded.
    """
    path = folder / "runs.csv"
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    return table[~table["run"].isin([run.name for run in runs])].reset_index(drop=True)


def collect(cfg: RunConfig, runs: list[Run], recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished run, in grid order: from its folder here, else from `recorded` (`recorded_rows`)."""
    here = [row | {"source": "here"} for run, key in zip(runs, grid_keys(cfg))
            if (row := run_row(run, *key)) is not None]
    frame = pd.DataFrame(here)
    if recorded is not None and not recorded.empty:
        frame = pd.concat([frame, recorded], ignore_index=True) if not frame.empty else recorded
    if frame.empty:
        return frame
    order = {run.name: i for i, run in enumerate(runs)}
    return frame.sort_values("run", key=lambda names: names.map(order), kind="stable").reset_index(drop=True)


def check_one_dense_model(frame: pd.DataFrame, expected: str | None, folder: Path) -> None:
    """Refuse a table of runs made on different dense models (`dense_digest`), or on another than `expected`.

    Runs recorded before digests were kept have none and are not checked here; `dense_test_accuracy` (runs with a
    final pass) still tells some of them apart.
    """
    if frame.empty:
        return
    digests = frame["dense_digest"].dropna().unique().tolist() if "dense_digest" in frame else []
    if expected is not None and digests and digests != [expected]:
        others = frame.loc[frame["dense_digest"].notna() & (frame["dense_digest"] != expected), "run"].tolist()
        raise UserError(f"{folder}: {len(others)} run(s) were made on another dense model (digest "
                        f"{', '.join(d for d in digests if d != expected)}) than this config's ({expected}): "
                        f"{', '.join(others[:6])}{' ...' if len(others) > 6 else ''}. Runs on two dense models cannot "
                        f"share one table: give a new --out folder, or set model.checkpoint to the model they used")
    if len(digests) > 1:
        raise UserError(f"{folder}: its runs were made on {len(digests)} different dense models ({', '.join(digests)}); "
                        f"they cannot share one table")


def missing_runs(runs: list[Run], frame: pd.DataFrame) -> list[str]:
    """Grid runs neither finished here nor recorded."""
    tabled = set(frame["run"]) if not frame.empty else set()
    return [run.name for run in runs if run.name not in tabled]


MEAN_COLUMNS = ["val_accuracy", "reward", "test_accuracy_oneshot", "test_accuracy", "drop_pp", "macs_ratio",
                "params_ratio", "dense_latency_b1_ms", "latency_b1_ms", "dense_latency_b64_ms", "latency_b64_ms",
                "speedup_b1", "speedup_b64", "search_seconds"]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (target, method), in the configured method order."""
    columns = [c for c in MEAN_COLUMNS if c in frame]
    grouped = frame.groupby(["macs_target", "method"], sort=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["seeds"] = grouped.size()
    stats["evaluations"] = grouped["evaluations"].max()
    stats["evaluations_min"] = grouped["evaluations"].min()  # a searcher that converged stops early (README)
    if "device" in frame:  # runs of one protocol may come from several machines (`bench --collect-only`)
        stats["device"] = grouped["device"].agg(lambda d: "+".join(sorted(set(d.dropna().astype(str)) - {""})))
    return stats.reset_index()


def evaluations_range(row: pd.Series) -> str:
    """"200", or "45–200" where a seed's searcher stopped early: the max alone would hide a shorter run."""
    most = int(row["evaluations"])
    least = row.get("evaluations_min")
    return f"{int(least)}–{most}" if least is not None and not pd.isna(least) and int(least) < most else str(most)


def display_table(stats: pd.DataFrame) -> pd.DataFrame:
    """`mean ± std` strings for the Markdown table."""
    def pm(row: pd.Series, column: str, scale: float = 1.0, digits: int = 2) -> str:
        mean, std = row.get(f"{column}_mean"), row.get(f"{column}_std")
        if mean is None or pd.isna(mean):
            return "–"
        text = f"{scale * mean:.{digits}f}"
        return text if pd.isna(std) else f"{text} ± {scale * std:.{digits}f}"

    rows = []
    for _, r in stats.iterrows():
        rows.append({"MACs target": f"{100 * r['macs_target']:.0f}%", "method": r["method"],
                     "evals": evaluations_range(r), "seeds": int(r["seeds"]),
                     "val acc % (adaptive BN)": pm(r, "val_accuracy", 100), "reward": pm(r, "reward", 1, 4),
                     "test acc % one-shot (adaptive BN)": pm(r, "test_accuracy_oneshot", 100),
                     "test acc % after final pass": pm(r, "test_accuracy", 100),
                     "drop pp": pm(r, "drop_pp"), "MACs %": pm(r, "macs_ratio", 100, 1),
                     "params %": pm(r, "params_ratio", 100, 1),
                     "b1 ms dense → pruned": f"{pm(r, 'dense_latency_b1_ms')} → {pm(r, 'latency_b1_ms')}",
                     "b64 ms dense → pruned": f"{pm(r, 'dense_latency_b64_ms', 1, 1)} → {pm(r, 'latency_b64_ms', 1, 1)}",
                     "speed-up b1": pm(r, "speedup_b1"), "speed-up b64": pm(r, "speedup_b64"),
                     "search s": pm(r, "search_seconds", 1, 0), "device": r.get("device", "") or "–"})
    frame = pd.DataFrame(rows)
    empty = [c for c in frame if frame[c].isin(["–", "– → –"]).all()]  # e.g. the final pass's columns when it is off
    return frame.drop(columns=empty)


def best_reward_curves(cfg: RunConfig, runs: list[Run], recorded: set[str] = frozenset(),
                       folder: Path | None = None) -> pd.DataFrame:
    """Best reward so far vs evaluation, per method, target and seed (rules: their single evaluation).
    Runs in `recorded` (tabled from runs.csv) are read from the evaluations kept in `folder`."""
    frames = []
    for run, (method, target, seed) in zip(runs, grid_keys(cfg)):
        if run.done:
            table = run.out / "evaluations.csv"
        elif run.name in recorded and folder is not None:
            table = kept_path(folder, run.name, "evaluations.csv")
        else:
            continue
        if not table.is_file():
            continue
        ev = pd.read_csv(table)
        ev = ev[ev["state"] == "COMPLETE"].reset_index(drop=True)
        frames.append(pd.DataFrame({"method": method, "macs_target": target, "seed": seed,
                                    "evaluation": range(1, len(ev) + 1), "best_reward": ev["reward"].cummax()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_best_reward(curves: pd.DataFrame, budget: int, path: Path) -> None:
    """One panel per target: mean best reward vs evaluations per searcher; rules as horizontal lines."""
    targets = sorted(curves["macs_target"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        part = curves[curves["macs_target"] == target]
        for i, (method, group) in enumerate(part.groupby("method", sort=False)):
            mean = group.groupby("evaluation")["best_reward"].agg(["mean", "std"])
            if len(mean) == 1:
                ax.axhline(mean["mean"].iloc[0], color=f"C{i}", linestyle="--", label=f"{method} (rule)")
                continue
            ax.plot(mean.index, mean["mean"], color=f"C{i}", label=method)
            ax.fill_between(mean.index, mean["mean"] - mean["std"].fillna(0), mean["mean"] + mean["std"].fillna(0),
                            color=f"C{i}", alpha=0.15)
        ax.set_xlim(1, budget)
        ax.set_title(f"{100 * target:.0f}% of dense MACs")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best reward so far (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def is_rule(cfg: RunConfig, method: str) -> bool:
    return method_searcher(cfg, method) in RULES
