"""Policy reuse: the agent searched on the bench model (`bench.transfer_method`, AMC's DDPG by default), applied to
another model.

Three runs on the transfer model at the first MACs target and seed: zero-shot (`prunepilot transfer`:
the agent's own policy for the new model and the source search's best policy resampled onto it, one
evaluation each), a warm-started search with `transfer_fraction` of the budget (`search --agent
--policy`: the agent goes on, seeded with that resampled policy), and a from-scratch search with the
whole budget. No final pass: the comparison is on search reward. `transfer_warm_seeds` adds warm starts with
other search seeds (a quarter of the from-scratch cost each), so that the target is also read on their mean;
`transfer_scratch_seeds` adds from-scratch searches with other seeds, so that the level the warm starts must
reach is also read on the from-scratch mean, not on one search's best (which can be one lucky random draw).

Run folders are not committed; each finished search's evaluations and the zero-shot result are kept in
`reuse/` beside the tables. A clone (with `bench.transfer_source=<folder>/reuse/source`) reads a search
whose folder is gone from its kept evaluations ("recorded") and runs only the searches neither here nor kept,
so adding a seed costs that seed's search alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from agents.sb3_agents import BUILDERS
from bench.comparison import is_rl_method, kept_path, run_name, searcher_overrides, target_tag
from bench.grid import Run
from pruning.checkpoint import atomic_copy
from pruning.config import RunConfig, validated
from pruning.errors import UserError


def source_run(cfg: RunConfig, folder: Path) -> Path:
    """The search whose agent and best policy are reused: `bench.transfer_source`, else this bench's own run of
    `bench.transfer_method` at the first target and seed (`check_transfer_method` makes sure it is in the grid)."""
    b = cfg.bench
    if b.transfer_source is not None:
        return Path(b.transfer_source)
    return folder / "runs" / run_name(b.transfer_method, b.macs_targets[0], b.seeds[0])


def check_transfer_method(cfg: RunConfig) -> None:
    """`bench.transfer_method` names an RL method (a warm start continues a learned agent, which the other
    searchers and the baseline variants do not have), and one this bench runs unless `transfer_source` is given:
    checked before anything runs, not after the comparison."""
    b = cfg.bench
    method = b.transfer_method
    if not is_rl_method(cfg, method):
        raise UserError(f"bench.transfer_method: expected an agent searcher ({', '.join(BUILDERS)}) or a "
                        f"bench.variants name of one that is not a baseline, got {method!r}")
    if b.transfer_source is None and method not in b.methods:
        raise UserError(f"bench.transfer_method: policy reuse starts from the {method} agent, so bench.methods must "
                        f"include {method} (or set bench.transfer_source, or bench.transfer_model: null)")
    if b.transfer_prior and transfer_agent_candidates(cfg) <= 1:
        raise UserError(f"bench.transfer_prior: a prior screens an agent's candidates, and the warm starts of {method} "
                        f"send every proposal unscreened (agent.candidates 1); choose a screening transfer_method "
                        f"or add agent.candidates=32 to bench.transfer_overrides")


def transfer_agent_candidates(cfg: RunConfig) -> int:
    """`agent.candidates` of the searches on the transfer model (the config, its transfer overrides, the variant's)."""
    searcher, variant = method_settings(cfg)
    overrides = [*cfg.bench.transfer_overrides, *searcher, *variant]
    return validated(cfg.model_dump(), overrides, "bench.transfer_overrides").agent.candidates


def method_settings(cfg: RunConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The searcher overrides and the variant overrides of `bench.transfer_method`, for the searches on the
    transfer model (the variant's after everything else, as in the comparison)."""
    method = cfg.bench.transfer_method
    variant = cfg.bench.variants.get(method)
    return searcher_overrides(cfg, method), tuple(variant.overrides if variant else ())


def source_files(cfg: RunConfig, folder: Path) -> tuple[Path, Path]:
    """(agent.zip, best_policy.json) of the source search; a missing one is a UserError naming it."""
    run = source_run(cfg, folder)
    agent, policy = run / "agent.zip", run / "best_policy.json"
    needed = (agent, policy, *((run / "evaluations.csv",) if cfg.bench.transfer_prior else ()))
    for path in needed:
        if not path.is_file():
            hint = ("bench.transfer_source must name a finished agent search's run folder" if cfg.bench.transfer_source
                    else f"run the comparison part first (its {cfg.bench.transfer_method} run is the source)")
            raise UserError(f"bench transfer: {path} not found; {hint}")
    return agent, policy


def keep_source(folder: Path, agent: Path, policy: Path) -> None:
    """Copy the source search's agent (with its metadata file), best policy and evaluations (a prior's data) into
    `folder`/reuse/source.

    A source's run folder is not committed (nor is any run folder), so a clone could not rerun the transfer
    without this copy: `bench.transfer_source=<folder>/reuse/source` does.
    """
    kept = folder / "reuse" / "source"
    kept.mkdir(parents=True, exist_ok=True)
    for src in (agent, agent.with_suffix(".json"), policy, policy.with_name("evaluations.csv")):
        if src.is_file() and src.resolve() != (kept / src.name).resolve():
            atomic_copy(src, kept / src.name)


class TransferRuns(NamedTuple):
    """The transfer's runs: zero-shot, the warm starts (first seed's first) and the from-scratch searches (likewise)."""

    zero: Run
    warm: list[Run]
    scratch: list[Run]

    @property
    def searches(self) -> list[Run]:
        """Every search, the first seed's warm start and from-scratch search first."""
        return [self.warm[0], self.scratch[0], *self.warm[1:], *self.scratch[1:]]


def transfer_runs(cfg: RunConfig, config: str, folder: Path, overrides: list[str]) -> TransferRuns:
    """The zero-shot run (which also trains the target's baseline), the warm starts (the first seed's, then one for
    each of `transfer_warm_seeds`) and the from-scratch searches (the first seed's, then `transfer_scratch_seeds`)."""
    b = cfg.bench
    agent, policy = map(str, source_files(cfg, folder))
    target, seed = b.macs_targets[0], b.seeds[0]
    # the source model's checkpoint does not fit the target model: the target trains (or loads its cached) baseline
    common = (*overrides, f"model.name={b.transfer_model}", "model.checkpoint=null", *b.transfer_overrides,
              f"env.macs_target={target}", f"search.seed={seed}", "sweep.accuracy_floor=null")
    # the zero-shot run goes first and alone (it trains the target's baseline): it keeps the config's threads
    searcher, variant = method_settings(cfg)
    search = (*common, "threads=1", *searcher, "search.backend=local", "search.final_pass=false", *variant)
    base = folder / "transfer" / f"{b.transfer_model}-{target_tag(target)}"
    warm_budget = max(1, round(b.transfer_fraction * b.evaluations))
    reuse = ("--agent", agent, "--policy", policy)
    warm_reuse = (*reuse, *(("--prior", str(Path(policy).parent)) if b.transfer_prior else ()))
    # the variant's settings too, so that a transfer override valid only beside them (say, one of its screen's) loads
    zero = Run("zero-shot", "transfer", config, base / "zero-shot", (*common, *variant), reuse, ("transfer.json",))
    warm = [Run("warm-start", "search", config, base / "warm-start", (*search, f"search.evaluations={warm_budget}"),
                warm_reuse)]
    warm += [Run(f"warm-start-s{s}", "search", config, base / f"warm-start-s{s}",
                 (*search, f"search.evaluations={warm_budget}", f"search.seed={s}"), warm_reuse) for s in b.transfer_warm_seeds]
    scratch = [Run("from-scratch", "search", config, base / "from-scratch", (*search, f"search.evaluations={b.evaluations}"))]
    scratch += [Run(f"from-scratch-s{s}", "search", config, base / f"from-scratch-s{s}",
                    (*search, f"search.evaluations={b.evaluations}", f"search.seed={s}")) for s in b.transfer_scratch_seeds]
    return TransferRuns(zero, warm, scratch)


ZERO_SHOT_KEPT = "zero-shot.json"
"""The zero-shot run's transfer.json, kept under reuse/ (a search's evaluations are kept as evaluations/<name>.csv)."""


def kept_file(reuse: Path, run: Run) -> Path:
    """Where `run`'s result is kept under `reuse` (the bench folder's reuse/): the file a clone reads it from."""
    return reuse / ZERO_SHOT_KEPT if run.command == "transfer" else kept_path(reuse, run.name, "evaluations.csv")


def result_file(run: Run, reuse: Path | None = None) -> Path:
    """The run's result: from its folder when it finished here, else the copy kept under `reuse`."""
    own = run.out / ("transfer.json" if run.command == "transfer" else "evaluations.csv")
    return kept_file(reuse, run) if reuse is not None and not run.done else own


def is_recorded(run: Run, reuse: Path) -> bool:
    """Finished in an earlier call whose folder is gone (a clone): its kept result stands in for it."""
    return not run.done and kept_file(reuse, run).is_file()


def keep_zero_shot(reuse: Path, zero: Run) -> None:
    if zero.done:
        atomic_copy(zero.out / "transfer.json", reuse / ZERO_SHOT_KEPT)


def dense_digests(searches: Sequence[Run], previous: dict[str, str | None]) -> dict[str, str | None]:
    """{search: digest of the dense model it pruned}: from its folder, else as `previous` (the last transfer.json)
    recorded it (None for searches recorded before digests were kept)."""
    digests = {}
    for run in searches:
        summary = run.out / "search_summary.json"
        own = json.loads(summary.read_text()).get("baseline", {}).get("digest") if summary.is_file() else None
        digests[run.name] = own if own is not None else previous.get(run.name)
    return digests


def _scored(run: Run, reuse: Path | None = None) -> pd.DataFrame:
    ev = pd.read_csv(result_file(run, reuse))
    return ev[ev["state"] == "COMPLETE"].reset_index(drop=True)


def _best_row(scored: pd.DataFrame) -> dict:
    """The search's best evaluation as a table row: its accuracy and MACs, and when it was found."""
    best = scored.loc[scored["reward"].idxmax()]
    return {"val accuracy": float(best["accuracy"]), "MACs ratio": float(best["macs_ratio"]),
            "found at": int(best.name) + 1}


def _seed_label(run: Run) -> str:
    """'seed N' from the run's last search.seed override (its name where it has none)."""
    seeds = [o.split("=", 1)[1] for o in run.overrides if o.startswith("search.seed=")]
    return f"seed {seeds[-1]}" if seeds else run.name




def first_reaching(curve: pd.Series, level: float) -> int | None:
    hits = curve.index[curve >= level]
    return int(hits[0]) + 1 if len(hits) else None


def transfer_table(zero: Run, warm: Run, scratch: Run, more_warm: Sequence[Run] = (),
                   more_scratch: Sequence[Run] = (), reuse: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The runs side by side, and the target check (warm >= 98% of scratch with <= 25% of the evaluations): for the
    first seed's warm start against the first seed's from-scratch search; with `more_warm` (other seeds' warm starts)
    also for their mean, and with `more_scratch` (other seeds' from-scratch searches) for the warm mean against 98%
    of the from-scratch mean. With `reuse`, a run not finished here is read from its kept result there."""
    shot = json.loads(result_file(zero, reuse).read_text())
    warms, scratches = [warm, *more_warm], [scratch, *more_scratch]
    scored = {run.name: _scored(run, reuse) for run in (*warms, *scratches)}
    curves = {name: table["reward"].cummax() for name, table in scored.items()}
    bests = [float(curves[run.name].iloc[-1]) for run in warms]
    scratch_bests = [float(curves[run.name].iloc[-1]) for run in scratches]
    warm_curve, scratch_curve = curves[warm.name], curves[scratch.name]
    warm_best, scratch_best = bests[0], scratch_bests[0]
    labels = {"agent": "zero-shot: the agent's policy", "policy": "zero-shot: source best policy, resampled"}
    frame = pd.DataFrame([
        {"run": "uniform (rule)", "evaluations": 1, "best reward": None, "val accuracy": shot["uniform_accuracy"],
         "MACs ratio": shot["uniform_macs_ratio"]},
        *({"run": labels[c["source"].split(" ", 1)[0]], "evaluations": 1, "best reward": c["reward"],
           "val accuracy": c["accuracy"], "MACs ratio": c["macs_ratio"]} for c in shot["candidates"]),
        *_search_rows("warm-started search", warms, bests, scored),
        *_search_rows("from-scratch search", scratches, scratch_bests, scored),
    ])
    level = level_98pct(scratch_best)
    within_budget = len(warm_curve) <= 0.25 * len(scratch_curve) + 1e-9
    check = {
        "warm_best_reward": warm_best, "scratch_best_reward": scratch_best, "zero_shot_reward": shot["reward"],
        "warm_over_scratch": warm_best / scratch_best if scratch_best > 0 else None, "level_98pct": level,
        "warm_evaluations": len(warm_curve), "scratch_evaluations": len(scratch_curve),
        "scratch_evaluations_to_reach_warm_best": first_reaching(scratch_curve, warm_best),
        "warm_evaluations_to_reach_98pct_scratch": first_reaching(warm_curve, level),
    }
    check["met"] = bool(warm_best >= level and within_budget)
    mean = sum(bests) / len(bests)
    if more_warm:
        check.update(warm_seed_best_rewards={_seed_label(run): best for run, best in zip(warms, bests)},
                     warm_mean_best_reward=mean, warm_seeds_meeting_level=sum(b >= level for b in bests),
                     met_on_mean=bool(mean >= level and within_budget))
    if more_scratch:
        scratch_mean = sum(scratch_bests) / len(scratch_bests)
        mean_level = level_98pct(scratch_mean)
        check.update(scratch_seed_best_rewards={_seed_label(run): best for run, best in zip(scratches, scratch_bests)},
                     scratch_mean_best_reward=scratch_mean, level_98pct_of_scratch_mean=mean_level,
                     warm_seeds_meeting_scratch_mean_level=sum(b >= mean_level for b in bests),
                     met_on_scratch_mean=bool(mean >= mean_level and within_budget))
    return frame, check


def _search_rows(label: str, runs: Sequence[Run], bests: Sequence[float], scored: dict[str, pd.DataFrame]) -> list[dict]:
    """One table row per search; labelled with its seed where there are several."""
    return [{"run": label + (f", {_seed_label(run)}" if len(runs) > 1 else ""), "evaluations": len(scored[run.name]),
             "best reward": best, **_best_row(scored[run.name])} for run, best in zip(runs, bests)]


def level_98pct(best: float) -> float:
    """The level "98% of the from-scratch best" as a margin of 2% of its size, so that it also reads right for rewards
    below zero (amc_error is -error), where a plain ratio would flip."""
    return best - 0.02 * abs(best)
