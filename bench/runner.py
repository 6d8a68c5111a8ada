"""`prunepilot bench CONFIG`: PrunePilot against the baselines, side by side, into results/bench/<name>/.

Parts (all by default, `--parts` picks some): the method comparison (bench/comparison.py), policy
reuse (bench/transfer.py), search throughput on Ray Tune (bench/search_efficiency.py) and the zoo
speed-up table (bench/zoo.py). Every run is a separate process whose folder is kept, so running the
same command again continues where it stopped; summary.md is rebuilt from whatever is on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from agents.agent import MAX_EPISODES_PER_EVALUATION
from agents.sb3_agents import check_agent_kwargs
from bench.comparison import (aggregate, best_reward_curves, check_one_dense_model, collect, comparison_runs,
                              display_table, is_rl_method, is_rule, keep_run_files, missing_runs, plot_best_reward,
                              recorded_rows, rows_outside_grid, searcher_overrides)
from bench.grid import GridOutcome, require, run_grid
from bench.latency import quiet_latency
from bench.resume_guard import check_same_settings
from bench.search_efficiency import measure
from bench.transfer import (check_transfer_method, dense_digests, is_recorded, keep_source, keep_zero_shot,
                            source_files, transfer_runs, transfer_table)
from bench.zoo import display_zoo, zoo_rows
from envs.factory import check_env_settings
from envs.rewards import describe_latency_penalty
from pruning.baseline import known_digest
from pruning.checkpoint import atomic_write_text
from pruning.config import AGENT_NAMES, RunConfig, load_config, validated
from pruning.data import load_data
from pruning.errors import UserError
from pruning.models import model_factory
from pruning.runtime import set_threads
from search.cli import output_folder
from search.folder_claim import STALE_AFTER_S, hold_claim
from search.local import SEARCHERS, check_searcher
from search.report import markdown_table, write_json, write_table

log = logging.getLogger("prunepilot")
PARTS = ("comparison", "transfer", "efficiency", "zoo")
DROP_LIMIT_PP = {0.5: 0.3, 0.25: 1.5}  # issue targets: at 2x and 4x MACs reduction


def latency_reward(cfg: RunConfig) -> str:
    """The predicted-latency term of the searches' reward, for the summary; empty when off."""
    e = cfg.env
    if e.latency_weight == 0:
        return ""
    return f"{describe_latency_penalty(e.latency_weight, e.latency_target)}, L the predicted latency ratio from " \
           f"`{e.latency_table or 'a table each run measured'}`"


def parse_parts(text: str | None) -> list[str]:
    parts = [p.strip() for p in (text or ",".join(PARTS)).split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UserError(f"--parts: unknown part(s) {unknown}; expected a comma-separated subset of {list(PARTS)}")
    return parts


def check_methods(cfg: RunConfig) -> None:
    """Every method is a searcher or a variant of one whose settings are valid; nothing runs before this passes."""
    for method in cfg.bench.methods:
        if method not in cfg.bench.variants:
            check_searcher(method, field="bench.methods")
            # the config's agent settings as this searcher's agent reads them (sac refuses some of ddpg's)
            resolved = validated(cfg.model_dump(), list(searcher_overrides(cfg, method)), f"bench.methods: {method}")
            check_method_agent(resolved, f"bench.methods: {method}")
    for name, variant in cfg.bench.variants.items():
        field = f"bench.variants.{name}"
        if name in SEARCHERS:
            raise UserError(f"{field}: a variant needs a name of its own, not the searcher name {name!r}")
        check_searcher(variant.searcher, field=f"{field}.searcher")
        resolved = validated(cfg.model_dump(), [*searcher_overrides(cfg, name), *variant.overrides],
                             f"{field}.overrides")
        if name in cfg.bench.methods:
            try:
                check_env_settings(resolved)
            except UserError as exc:
                raise UserError(f"{field}.overrides: {exc}") from None
            check_method_agent(resolved, f"{field}.overrides")


def check_method_agent(resolved: RunConfig, where: str) -> None:
    """agent.kwargs as the method's agent takes them, before the first run (each run's search would refuse them)."""
    if resolved.search.searcher in AGENT_NAMES:
        try:
            check_agent_kwargs(resolved.agent)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------- parts
def comparison_part(cfg: RunConfig, config: str, folder: Path, overrides: list[str], show: bool,
                    collect_only: bool = False) -> None:
    runs = comparison_runs(cfg, config, folder, overrides)
    recorded = recorded_rows(folder, runs)  # finished in an earlier call whose folders are gone: not run again
    recorded_names = set(recorded.get("run", []))
    outside = rows_outside_grid(folder, runs)  # read before runs.csv is rewritten: kept in it, left out of the table
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    # runs of another dense model (another machine retrained the baseline) are refused before anything runs
    check_one_dense_model(collect(cfg, runs, recorded), known_digest(cfg, data), folder)
    if collect_only:  # a protocol split across machines: the runs were copied in, nothing is started here
        outcome = GridOutcome(skipped=[r.name for r in runs if r.done])
    else:
        outcome = run_grid([r for r in runs if r.name not in recorded_names], cfg.bench.parallel, "comparison runs", show)
    keep_run_files(folder, runs)
    frame = collect(cfg, runs, recorded)
    check_one_dense_model(frame, known_digest(cfg, data), folder)
    if not frame.empty and cfg.bench.final_pass:
        set_threads(cfg.threads)
        frame = quiet_latency(frame, {r.name: r.out for r in runs}, cfg.eval.latency_repeats)
    missing = missing_runs(runs, frame)
    if missing:
        write_json({"missing": missing}, folder / "missing.json")
    else:
        (folder / "missing.json").unlink(missing_ok=True)
    if not frame.empty:
        write_table(pd.concat([frame, outside], ignore_index=True) if not outside.empty else frame, folder, "runs")
        stats = write_table(aggregate(frame), folder, "table")
        atomic_write_text(folder / "table.md", markdown_table(display_table(stats)) + "\n")
        plot_best_reward(best_reward_curves(cfg, runs, recorded_names, folder), cfg.bench.evaluations,
                         folder / "best_reward.png")
    require(outcome, runs)


def transfer_part(cfg: RunConfig, config: str, folder: Path, overrides: list[str], show: bool) -> None:
    if cfg.bench.transfer_model is None:
        return
    agent, policy = source_files(cfg, folder)
    keep_source(folder, agent, policy)
    reuse = folder / "reuse"
    runs = transfer_runs(cfg, config, folder, overrides)
    # searches finished in an earlier call whose folders are gone (a clone) are read from reuse/, not run again; so
    # is the zero-shot run when no search is left, else it runs first as ever (it trains the target's baseline)
    recorded = [run.name for run in runs.searches if is_recorded(run, reuse)]
    searches = [run for run in runs.searches if run.name not in recorded]
    if not searches and is_recorded(runs.zero, reuse):
        recorded.insert(0, runs.zero.name)
    zero = [run for run in [runs.zero] if run.name not in recorded]
    outcome = run_grid(zero, 1, "transfer: zero-shot (and the target's baseline)", show)
    require(outcome, zero)
    outcome = run_grid(searches, cfg.bench.parallel, "transfer: searches", show)
    require(outcome, searches)
    # run folders are not committed: their evaluations and best policies are kept in reuse/ (evaluations/ and
    # policies/ hold the comparison's runs alone), and the zero-shot result beside them
    previous = folder / "transfer.json"
    digests = dense_digests(runs.searches, json.loads(previous.read_text()).get("dense_digests", {})
                            if previous.is_file() else {})
    # searches on two dense models (a clone that retrained the target's baseline, beside recorded ones) are refused,
    # and the earlier transfer.json is left as it was
    check_one_dense_model(pd.DataFrame({"run": list(digests), "dense_digest": list(digests.values())}), None, folder)
    keep_run_files(reuse, runs.searches)
    keep_zero_shot(reuse, runs.zero)
    frame, check = transfer_table(runs.zero, runs.warm[0], runs.scratch[0], runs.warm[1:], runs.scratch[1:], reuse)
    write_table(frame, folder, "transfer")
    write_json({"model": cfg.bench.transfer_model, "method": cfg.bench.transfer_method, "source_agent": str(agent),
                "source_policy": str(policy), "prior": cfg.bench.transfer_prior, "recorded_runs": recorded,
                "dense_digests": digests, **check},
               folder / "transfer.json")
    atomic_write_text(folder / "transfer.md", markdown_table(frame) + "\n")


def efficiency_part(cfg: RunConfig, config: str, folder: Path, overrides: list[str]) -> None:
    if cfg.bench.efficiency_evaluations == 0 or (folder / "efficiency.json").is_file():
        return
    figures, md = measure(config, cfg.bench.efficiency_evaluations, tuple(overrides))
    write_json(figures, folder / "efficiency.json")
    atomic_write_text(folder / "efficiency.md", md)


def zoo_part(cfg: RunConfig, folder: Path) -> None:
    if not cfg.bench.zoo:
        return
    set_threads(cfg.threads)
    data = load_data(cfg.data.name, cfg.data.path, cfg.data.val_fraction, cfg.data.val_size, **cfg.data.options)
    frame = write_table(zoo_rows(cfg, data, cfg.eval.latency_repeats), folder, "zoo")
    atomic_write_text(folder / "zoo.md", markdown_table(display_zoo(frame)) + "\n")


# ----------------------------------------------------------------------------------------- summary
def rl_methods(cfg: RunConfig) -> list[str]:
    """The methods that run an RL agent (ddpg, td3, sac, ppo or a variant of one not marked as a baseline)."""
    return [m for m in cfg.bench.methods if is_rl_method(cfg, m)]


def target_checks(cfg: RunConfig, stats: pd.DataFrame) -> list[str]:
    """The issue's targets, each stated with the figures and whether it is met, for every RL method.

    The baselines are the methods that run no agent; RL methods are not each other's baselines.
    """
    rls = rl_methods(cfg)
    if not rls:
        return ["- no RL method in bench.methods: nothing to check"]
    lines = []
    for rl, (target, part) in ((rl, group) for rl in rls for group in stats.groupby("macs_target", sort=False)):
        mine = part[part["method"] == rl]
        if mine.empty:
            continue
        mine = mine.iloc[0]
        others = part[~part["method"].isin(rls)]
        for metric, label in (("reward_mean", "search reward"), ("val_accuracy_mean", "adaptive-BN val accuracy"),
                              ("test_accuracy_mean", "test accuracy after the final pass")):
            if metric not in part or others[metric].isna().all():
                continue
            best = others.loc[others[metric].idxmax()]
            met = mine[metric] >= best[metric]
            lines.append(f"- {100 * target:.0f}% MACs, {label}: {rl} {mine[metric]:.4f} vs best baseline "
                         f"{best['method']} {best[metric]:.4f} → **{'met' if met else 'NOT met'}**")
        limit = DROP_LIMIT_PP.get(round(target, 2))
        if limit is not None and "drop_pp_mean" in part and not pd.isna(mine["drop_pp_mean"]):
            lines.append(f"- {100 * target:.0f}% MACs, {rl} accuracy drop after the final pass: "
                         f"{mine['drop_pp_mean']:.2f} pp (target ≤ {limit} pp) → "
                         f"**{'met' if mine['drop_pp_mean'] <= limit else 'NOT met'}**")
        if "speedup_b64_mean" in part and not pd.isna(mine["speedup_b64_mean"]):
            reduction = 1 / mine["macs_ratio_mean"]
            ratio = mine["speedup_b64_mean"] / reduction
            lines.append(f"- {100 * target:.0f}% MACs, {rl} latency speed-up at batch 64: x{mine['speedup_b64_mean']:.2f}"
                         f" for x{reduction:.2f} fewer MACs = {ratio:.2f} of the MACs reduction (target ≥ 0.8) → "
                         f"**{'met' if ratio >= 0.8 else 'NOT met'}**")
    return lines


def missing_runs_note(folder: Path) -> list[str]:
    """The protocol's runs that the table lacks (its means are over fewer seeds where one is missing), and the
    runs tabled as an earlier call recorded them, whose latencies were not timed in this call."""
    path = folder / "missing.json"
    missing = json.loads(path.read_text())["missing"] if path.is_file() else []
    lines = []
    if missing:
        lines += [f"**Partial protocol:** {len(missing)} run(s) not finished and left out: {', '.join(missing)}. "
                  "The `seeds` column says how many runs each mean is over.", ""]
    runs = pd.read_csv(folder / "runs.csv") if (folder / "runs.csv").is_file() else pd.DataFrame()
    if "source" in runs and (runs["source"] == "recorded").any():
        names = runs.loc[runs["source"] == "recorded", "run"].tolist()
        lines += [f"**Recorded runs:** {len(names)} run(s) finished in earlier calls whose folders are not here "
                  f"(another machine or clone) are tabled as `runs.csv` recorded them, latencies as timed then "
                  f"(`latency_threads` in `runs.csv`; each speed-up pairs a model with its dense baseline timed "
                  f"in the same call): {', '.join(names)}. Their curves come from `evaluations/`.", ""]
    return lines


def default_folder(cfg: RunConfig) -> Path:
    return Path("results") / "bench" / cfg.name


PART_OUTPUTS = {"comparison": "table.csv", "transfer": "transfer.json", "efficiency": "efficiency.json", "zoo": "zoo.md"}
"""The file each part leaves in a bench folder once it has tabled something."""


def folder_parts(folder: Path, parts: Sequence[str]) -> list[str]:
    """The parts this call ran and those an earlier call left outputs of, in PARTS order: what the summary's
    regenerate command must name, so that rerunning it neither skips a part the folder shows nor runs one it never
    had (a transfer-only folder would otherwise start the whole comparison)."""
    return [p for p in PARTS if p in parts or (folder / PART_OUTPUTS[p]).is_file()]


def summary_header(cfg: RunConfig, config: str, folder: Path, overrides: list[str], collect_only: bool,
                   parts: Sequence[str]) -> list[str]:
    """The title, the command that regenerates the folder, and every budget the figures below depend on."""
    b = cfg.bench
    out = [] if folder == default_folder(cfg) else ["--out", str(folder)]
    shown = folder_parts(folder, parts)
    picked = [] if len(shown) == len(PARTS) else ["--parts", ",".join(shown)]
    rerun = " ".join(["prunepilot bench", *map(shlex.quote, [config, *out, *picked,
                                                              *(["--collect-only"] if collect_only else []), *overrides])])
    lines = [f"# Benchmark `{cfg.name}`: {cfg.model.name} on {cfg.data.name}", "",
             f"Regenerate (continues where it stopped): `{rerun}`", "",
             f"Budgets: {b.evaluations} evaluations per searcher (rules: 1), seeds {b.seeds} (search.seed; the dense "
             f"baseline is shared), MACs targets {b.macs_targets}; final pass: "
             + (f"{cfg.prune.steps} cubic steps, {cfg.prune.finetune_epochs} epochs between steps, "
                f"{cfg.prune.final_epochs} final epochs, distillation {cfg.prune.distill}, importance "
                f"{cfg.prune.importance}, round_to {cfg.prune.round_to}" if b.final_pass else "off")
             + f". Rewards on {cfg.eval.val_limit or 'all'} validation images after {cfg.eval.bn_batches} adaptive-BN "
               f"batches; reward `{cfg.env.reward}` (λ {cfg.env.reward_lambda}){latency_reward(cfg)}"
             + (". Policies may remove whole residual blocks (`env.remove_blocks`)" if cfg.env.remove_blocks else "")
             + ". One torch "
               f"thread per run, "
               f"{b.parallel} runs at once (each run's device is in the `device` column: search seconds compare within one "
               f"device only)."
             + (f" Latencies: medians over {cfg.eval.latency_repeats} repeats on this machine's CPU with "
                f"{cfg.threads or 'all'} thread(s), measured after all runs with nothing else running, each pruned "
                "model alternating with its dense baseline, both as deployed (BatchNorm folded into the conv before "
                "it, as exported, and channels-last on a CPU)." if b.final_pass else ""), ""]
    return lines


def comparison_section(cfg: RunConfig, folder: Path) -> list[str]:
    """The methods' table, the best-reward plot and each target read from the table (none before a table)."""
    b, lines = cfg.bench, []
    if (folder / "table.csv").is_file():
        stats = pd.read_csv(folder / "table.csv")
        lines += ["## Comparison (mean ± std over seeds)", "", *missing_runs_note(folder), (folder / "table.md").read_text(), "",
                  "![best reward vs evaluations](best_reward.png)", "", "## Targets", "", *target_checks(cfg, stats), ""]
        rules = [m for m in b.methods if is_rule(cfg, m)]
        if rules:
            lines += [f"Rules ({', '.join(rules)}) evaluate a single policy; their 'evaluations' column is 1.", ""]
        if "evaluations_min" in stats and (stats["evaluations_min"] < stats["evaluations"]).any():
            lines += ["An 'evals' range (e.g. 45–200) means at least one seed's searcher stopped before its budget: "
                      f"its {MAX_EPISODES_PER_EVALUATION} proposals per budgeted evaluation ran out with fewer new "
                      "policies than the budget, the rest repeats of scored ones (it had converged); `runs.csv` has "
                      "each run's count.", ""]
    return lines


def transfer_section(cfg: RunConfig, folder: Path) -> list[str]:
    """Policy reuse: the warm-started and from-scratch searches and the transfer target, read as `transfer.json`
    recorded them (none before it)."""
    lines: list[str] = []
    if (folder / "transfer.json").is_file():
        t = json.loads((folder / "transfer.json").read_text())
        ratio = t["warm_over_scratch"]
        ratio_text = f" (ratio **{ratio:.3f}**)" if ratio is not None else ""
        first = f" ({next(iter(t['warm_seed_best_rewards']))})" if "warm_seed_best_rewards" in t else ""
        method = t.get("method", "ddpg")  # files written before bench.transfer_method reused the DDPG agent
        lines += [f"## Policy reuse: {cfg.model.name} agent → {t['model']}", "",
                  f"Searches of `{method}`, warm-started from its agent and from scratch." +
                  (" The warm starts also screen with a prior of the source search's scored policies "
                   "(`search --prior`, bench.transfer_prior)." if t.get("prior") else ""), "",
                  (folder / "transfer.md").read_text(),
                  *([f"- recorded runs (read from reuse/, their folders not here): {', '.join(t['recorded_runs'])}"]
                    if t.get("recorded_runs") else []),
                  f"- warm-started best reward{first} {t['warm_best_reward']:.4f} vs from-scratch best "
                  f"{t['scratch_best_reward']:.4f}{ratio_text}, with {t['warm_evaluations']} vs "
                  f"{t['scratch_evaluations']} evaluations; target: at least 98% of the from-scratch best "
                  f"(≥ {t['level_98pct']:.4f}) with ≤ 25% of its evaluations → **{'met' if t['met'] else 'NOT met'}**",
                  (f"- the from-scratch search first reached the warm-started best after "
                   f"{t['scratch_evaluations_to_reach_warm_best']} evaluations"
                   if t["scratch_evaluations_to_reach_warm_best"] else
                   "- the from-scratch search never reached the warm-started best within its budget")]
        if "warm_mean_best_reward" in t:
            seeds = len(t["warm_seed_best_rewards"])
            lines += [f"- over the {seeds} warm starts (one per search seed): mean best reward "
                      f"{t['warm_mean_best_reward']:.4f}, {t['warm_seeds_meeting_level']} of {seeds} at or above the "
                      f"98% level → **{'met' if t['met_on_mean'] else 'NOT met'} on the mean**"]
        if "scratch_mean_best_reward" in t:
            seeds = len(t["scratch_seed_best_rewards"])
            warm_mean = t.get("warm_mean_best_reward", t["warm_best_reward"])
            each = ", ".join(f"{label} {best:.4f}" for label, best in t["scratch_seed_best_rewards"].items())
            lines += [f"- against the {seeds} from-scratch searches ({each}): mean best reward "
                      f"{t['scratch_mean_best_reward']:.4f}, 98% of it ≥ {t['level_98pct_of_scratch_mean']:.4f}; "
                      f"warm-started mean {warm_mean:.4f}, {t['warm_seeds_meeting_scratch_mean_level']} warm start(s) at "
                      f"or above it → **{'met' if t['met_on_scratch_mean'] else 'NOT met'} against the from-scratch "
                      f"mean**"]
        lines += [""]
    return lines


def write_summary(cfg: RunConfig, config: str, folder: Path, overrides: list[str], collect_only: bool = False,
                  parts: Sequence[str] = PARTS) -> Path:
    """`summary.md`: what a reader of the folder sees first, from the tables the parts wrote (each section only
    once its part has written its table)."""
    lines = [*summary_header(cfg, config, folder, overrides, collect_only, parts), *comparison_section(cfg, folder),
             *transfer_section(cfg, folder)]
    if (folder / "efficiency.md").is_file():
        lines += ["## Search efficiency on Ray Tune", "",
                  (folder / "efficiency.md").read_text().split("\n", 2)[2], ""]
    if (folder / "zoo.md").is_file():
        lines += ["## Speed-up across the model zoo (uniform policy, one-shot; latency depends on shapes only)", "",
                  (folder / "zoo.md").read_text(), ""]
    path = folder / "summary.md"
    atomic_write_text(path, "\n".join(lines))  # a Ctrl-C here left the earlier summary, not half of this one
    return path


def check_something_to_collect(runs: list, folder: Path) -> None:
    """--collect-only on a folder with no finished run wrote an empty summary and exited 0 (a wrong --out, say)."""
    if not any(run.done for run in runs) and recorded_rows(folder, runs).empty:
        raise UserError(f"--collect-only: {folder} holds no finished run of this comparison (run folders under "
                        f"{folder / 'runs'}/, or an earlier call's runs.csv); copy them in, or run without --collect-only")


def bench_job(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    check_methods(cfg)
    parts = parse_parts(args.parts)
    collect_only = args.collect_only
    if collect_only and parts != ["comparison"]:
        raise UserError("--collect-only: applies to the comparison part alone; add --parts comparison")
    folder = output_folder(Path(args.out) if args.out else default_folder(cfg))
    check_same_settings(folder, cfg.model_dump())
    if collect_only:
        check_something_to_collect(comparison_runs(cfg, args.config, folder, args.overrides), folder)
    if "transfer" in parts and cfg.bench.transfer_model:
        model_factory(cfg.bench.transfer_model, field="bench.transfer_model")  # not after hours of comparison runs
        check_transfer_method(cfg)
    if "zoo" in parts:
        for name in cfg.bench.zoo:
            model_factory(name, field="bench.zoo")
    if "transfer" in parts and cfg.bench.transfer_model and cfg.bench.transfer_source:
        source_files(cfg, folder)  # an earlier benchmark's search must be there before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    release = None if collect_only else claim_bench_folder(folder)  # collecting runs nothing: it may look on
    write_json(cfg.model_dump(), folder / "config.json")
    show = not args.quiet
    start = time.perf_counter()
    try:
        if "comparison" in parts:
            comparison_part(cfg, args.config, folder, args.overrides, show, collect_only)
        if "transfer" in parts:
            transfer_part(cfg, args.config, folder, args.overrides, show)
        if "efficiency" in parts:
            efficiency_part(cfg, args.config, folder, args.overrides)
        if "zoo" in parts:
            zoo_part(cfg, folder)
    finally:
        try:
            summary = write_summary(cfg, args.config, folder, args.overrides, collect_only, parts)
            log.info("bench: %.0f s; summary: %s", time.perf_counter() - start, summary)
        finally:
            if release is not None:
                release()
    print(summary.read_text())
    return 0


BENCH_CLAIM = ".bench.claim"


def claim_bench_folder(folder: Path) -> Callable[[], None]:
    """One bench at a time in a folder: a second one, started while the first runs, deleted the runs it found
    unfinished (the first's running ones) to start them again. Returns the release."""
    path = folder / BENCH_CLAIM
    return hold_claim(path, lambda held: (
        f"{folder}: another `prunepilot bench` (pid {held.get('pid')} on {held.get('host')}) runs in this folder, and "
        f"a second would delete and restart the runs it has not finished; wait for it, or stop it (Ctrl-C), then run "
        f"this again (if it is gone, delete {path}, or wait {STALE_AFTER_S:.0f} s after it stopped)"))
