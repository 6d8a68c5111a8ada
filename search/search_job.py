"""`prunepilot search`: baseline -> search (local or Ray Tune) -> final progressive pass -> results/<run>/."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from agents.agent import PruningAgent
from agents.baselines import uniform
from agents.sb3_agents import check_agent_kwargs
from agents.transfer_prior import SourceRewards
from envs.factory import build_env, env_kwargs
from envs.layer_pruning import LayerPruningEnv
from pruning.analysis import largest_ratio_above, uniform_sweep
from pruning.checkpoint import atomic_write_text, read_json_object
from pruning.config import AGENT_NAMES, RunConfig
from pruning.errors import UserError
from pruning.evaluate import EvalSettings, Evaluator
from pruning.latency_table import LatencyTable
from pruning.baseline import Baseline
from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph
from search.cli import run_folder
from search.folder_claim import (SETUP_CLAIM_KEY, STALE_AFTER_S, claim_is_stale, claim_text, create_exclusively,
                                 heartbeat_stopped, hold_claim, read_claim, take_over)
from search.jobs import Context, baseline_of, final_pass, measure_table, prepare, unit_graph
from search.local import check_searcher, run_local
from search.ray_address import address_of_environment, check_ray_address
from search.recording import SCREEN_ATTRS, EvaluationSink
from search.report import write_json, write_table
from search.review import pinned_storage, recorded_run_folder, shown_storage, sqlite_url
from search.reuse import SEEDING_SEARCHERS, check_seed_policies, load_seed_policies, move_policy
from search.search_report import uniform_beats, write_search_report
from search.termination import interrupts_deferred, raise_if_interrupted
from search.trial import latency_attr

log = logging.getLogger("prunepilot")


EXPERIMENT_IN_RUN = "search"
"""The Tune experiment's name under a run's own `ray/` folder (`run_tune` takes it from the state)."""


def prepare_run_folder(args: argparse.Namespace, cfg_name: str, backend: str) -> tuple[Path, dict]:
    """The run folder and its search state; a new search refuses a folder that already holds one."""
    if args.resume:
        out = Path(args.resume)
        state_file = out / "search.json"
        if not state_file.is_file():
            raise UserError(f"--resume: {state_file} not found; give the folder of an earlier `prunepilot search`")
        state = read_json_object(state_file, "a search's state")
        if SETUP_CLAIM_KEY in state:
            raise UserError(f"--resume: {out} holds a search whose set-up did not finish (nothing was evaluated), or "
                            f"is still running; a new search with --out {out} takes the folder over once it is gone")
        check_not_moved(out, state)
        if state.get("backend") == "local":
            raise UserError(f"--resume: {out} was searched by the local backend, which keeps no state to continue "
                            "from (Ray Tune's experiment does); search again with another --out, on Ray to be able to "
                            "resume")
        given = {"--storage": (args.storage and pinned_storage(args.storage), state.get("storage")),
                 "--storage-path": (args.storage_path and str(Path(args.storage_path).resolve()), state.get("storage_path"))}
        for flag, (asked, kept) in given.items():  # the study and Tune's experiment are where the search left them
            if asked and asked != kept:
                raise UserError(f"--resume: {out} keeps its search in {flag} {shown_storage(kept)}, not "
                                f"{shown_storage(asked)}; leave {flag} out "
                                f"to continue it there")
        return out, state
    out = run_folder(args, cfg_name)
    if (out / "search.json").exists():
        check_no_search_in(out)
    if (out / "summary.json").is_file():  # results/<config name>/ is also prune's default folder
        raise UserError(f"--out: {out} holds a pruned model (`prunepilot prune` wrote its summary.json); a search there "
                        "would replace its report and model: give another --out")
    storage = pinned_storage(args.storage) if args.storage else sqlite_url(str((out / "study.db").resolve()))
    storage_path = Path(args.storage_path).resolve() if args.storage_path else (out / "ray").resolve()
    # a --storage-path that many searches share (a cluster's folder) gets one Tune experiment per search: under one
    # name, a second search wrote into the first's experiment, and resuming the first restored the second
    experiment = f"{out.resolve().name}-{uuid.uuid4().hex[:8]}" if args.storage_path else EXPERIMENT_IN_RUN
    return out, {"storage": storage, "study_name": cfg_name, "storage_path": str(storage_path),
                 "experiment": experiment, "overrides": list(args.overrides), "backend": backend,
                 "run_folder": str(out.resolve())}


def check_no_search_in(out: Path) -> None:
    """Refuse a run folder that holds a search, or one that another search is setting up (its claim names the
    process); a claim whose process is gone from this machine (killed mid-set-up) is left for `claim_run_folder`."""
    kept = read_json_object(out / "search.json", "a search's state")
    claim = kept.get(SETUP_CLAIM_KEY)
    if isinstance(claim, dict):
        driver = out / DRIVER_CLAIM  # held from just after this claim: its heartbeat tells of another machine's too
        if claim_is_stale(claim) or (driver.is_file() and heartbeat_stopped(driver)):
            return
        raise UserError(f"{out}: another search (pid {claim.get('pid')} on {claim.get('host')}) is setting up in this "
                        "folder; give this one another --out (if that search is gone, delete its search.json)")
    resume = ("" if kept.get("backend") == "local" else f"continue it with --resume {out}, or ")  # see above
    raise UserError(f"{out} already holds a search; {resume}choose another --out")


def claim_run_folder(out: Path) -> None:
    """Take the run folder for this search before its set-up (the baseline's training, the floor's sweep: minutes).
    Two searches started at once into one folder (the same config twice, its default results/<name>/) both passed
    the 'already holds a search' check and wrote into one folder: one study.db holding both, one search.json, one
    evaluations.csv and report. search.json is created exclusively, so the second is refused."""
    out.mkdir(parents=True, exist_ok=True)
    claim = claim_text(SETUP_CLAIM_KEY)
    if create_exclusively(out / "search.json", claim):
        return
    seen = read_claim(out / "search.json")  # what is judged below: only that is replaced
    check_no_search_in(out)  # refuses a live one; a stale claim is taken over
    log.info("%s: taking over the run folder from a search whose set-up was stopped (its process is gone)", out)
    if not take_over(out / "search.json", seen, claim):
        check_no_search_in(out)  # another search took it over first: refused with its pid
        raise UserError(f"{out}: another search took this run folder over at the same time; give this one another "
                        "--out")


DRIVER_CLAIM = ".search.claim"
"""Held by the search's driver from its set-up to its end, new or resumed (folder_claim.hold_claim)."""


def hold_driver_claim(out: Path, config: str) -> Callable[[], None]:
    """One driver at a time in a run folder: a `--resume` started while the search still ran (or a second resume)
    continued the same Tune experiment and recorded into the same study beside it."""
    return hold_claim(out / DRIVER_CLAIM, lambda held: (
        f"{out}: its search is running (pid {held.get('pid')} on {held.get('host')}); a second driver would continue "
        f"the same experiment and study beside it. Wait for it, or stop it (Ctrl-C) and run `prunepilot search {config} "
        f"--resume {out}` then (if it is gone, delete {out / DRIVER_CLAIM}, or wait {STALE_AFTER_S:.0f} s after it "
        f"stopped)"))


def check_not_moved(out: Path, state: dict) -> None:
    """Tune's saved experiment (its callbacks, the agent's save path) names the folder the search started in, so a
    moved folder resumed nothing, and a copy resumed the original: it recorded into the original's study."""
    began = recorded_run_folder(state)
    if began is not None and began != out.resolve():
        where = "is still there" if (began / "search.json").is_file() else "is gone"
        raise UserError(f"--resume: {out} was started as {began} (which {where}), and the search's saved state names "
                        f"that folder; resume it at {began} (move it back), or start a new search")


def use_stored_overrides(args: argparse.Namespace) -> None:
    """A resumed search runs with the overrides it started with; different ones would change what is searched."""
    state_file = Path(args.resume) / "search.json" if args.resume else None
    if state_file is None or not state_file.is_file():
        return  # prepare_run_folder reports a missing state
    stored = read_json_object(state_file, "a search's state").get("overrides")
    if stored is None:
        return
    if args.overrides and args.overrides != stored:
        raise UserError(f"--resume: {state_file} started with overrides {stored}, not {args.overrides}; "
                        "give the same ones, or none to reuse them")
    args.overrides = stored


def check_one_search_target(cfg) -> None:
    """A floor sets the search's MACs target from the global sweep, which used to replace a given env.macs_target
    without a word (the log named the new target, nothing said the given one was dropped)."""
    if cfg.sweep.accuracy_floor is not None and "macs_target" in cfg.env.model_fields_set:
        raise UserError(f"env.macs_target ({cfg.env.macs_target}) and sweep.accuracy_floor ({cfg.sweep.accuracy_floor}) "
                        "both set the search's MACs target; give sweep.accuracy_floor=null to search at env.macs_target, "
                        "or leave env.macs_target out to take it from the global sweep")


def warn_if_warmup_fills_the_budget(cfg, warm_started: bool) -> None:
    """An off-policy agent acts at random for its first agent.warmup_episodes episodes: with a budget no larger, the
    'RL search' is a random search and the saved agent never acted on what it learned (a warm start skips the warm-up)."""
    if cfg.search.searcher in ("ddpg", "td3", "sac") and not warm_started \
            and cfg.agent.warmup_episodes >= cfg.search.evaluations:
        log.warning("agent.warmup_episodes (%d) >= search.evaluations (%d): every evaluation is a random warm-up "
                    "episode, so the %s agent never acts on what it learned; lower agent.warmup_episodes or raise "
                    "search.evaluations", cfg.agent.warmup_episodes, cfg.search.evaluations, cfg.search.searcher)


def target_from_floor(cfg, evaluator: Evaluator, out: Path) -> float:
    """Global first (seed article): the uniform sweep's largest ratio above the accuracy floor sets the MACs target."""
    rows = uniform_sweep(evaluator, cfg.sweep.ratios)
    chosen = largest_ratio_above(rows, cfg.sweep.accuracy_floor)
    if chosen is None or chosen["ratio"] == 0.0:
        raise UserError(f"sweep.accuracy_floor: no pruned uniform policy keeps accuracy >= {cfg.sweep.accuracy_floor} "
                        f"(dense validation accuracy {evaluator.dense_accuracy:.4f}); lower the floor")
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out, "global_sweep")
    log.info("global sweep: uniform ratio %.2f keeps accuracy %.4f >= floor %.4f at %.1f%% MACs: searching for policies "
             "within that MACs target", chosen["ratio"], chosen["accuracy"], cfg.sweep.accuracy_floor,
             100 * chosen["macs_ratio"])
    return float(chosen["macs_ratio"])


SEARCH_OWNED_AGENT_SETTINGS = ("candidates", "screen_after", "candidate_noise", "warm_start_noise",
                               "warm_start_random_candidates")
"""How a warm start screens and explores belongs to this search, not to the learned agent: taken from this run's
config, not the saved agent's."""


def check_warm_agent(agent_path: str | None, searcher: str) -> None:
    """--agent's file and algorithm, read before any training or sweep (they used to be read after both)."""
    if not agent_path:
        return
    if searcher not in ("ddpg", "td3", "sac", "ppo"):
        raise UserError(f"--agent: warm starts need an agent searcher, but search.searcher is {searcher!r}")
    _, _, saved = PruningAgent.read_metadata(agent_path)
    if saved.name != searcher:  # it would go on as its own algorithm under this searcher's name
        raise UserError(f"--agent: {agent_path} is a {saved.name} agent, but search.searcher is {searcher!r}; search "
                        f"with search.searcher={saved.name} to continue it")


def load_warm_agent(args: argparse.Namespace, cfg, graph) -> PruningAgent | None:
    """The saved agent to continue from (`--agent`, checked by `check_warm_agent`), ready to explore near its
    learned policy."""
    if not getattr(args, "agent", None):
        return None
    agent = PruningAgent.load(args.agent, LayerPruningEnv(graph, deferred=True, **env_kwargs(cfg)))
    agent.cfg = agent.cfg.model_copy(update={k: getattr(cfg.agent, k) for k in SEARCH_OWNED_AGENT_SETTINGS})
    agent.warm_start(seed=cfg.search_seed)
    return agent


def load_prior(args: argparse.Namespace, cfg) -> SourceRewards | None:
    """Another model's scored policies for the screen (`--prior`); fails before any training on bad input."""
    if not getattr(args, "prior", None):
        return None
    if cfg.search.searcher not in SEEDING_SEARCHERS or cfg.agent.candidates <= 1:
        raise UserError(f"--prior: a prior screens an agent's candidates, so it needs search.searcher in "
                        f"{', '.join(SEEDING_SEARCHERS)} and agent.candidates > 1 (got {cfg.search.searcher!r}, "
                        f"{cfg.agent.candidates})")
    return SourceRewards.load(args.prior)


def with_prior(agent: PruningAgent | None, prior: SourceRewards | None, cfg, graph) -> PruningAgent | None:
    """The search's agent (warm-started or new) screening with `prior`; `agent` unchanged without one."""
    if prior is None:
        return agent
    if agent is None:
        agent = PruningAgent.create(cfg.agent, LayerPruningEnv(graph, deferred=True, **env_kwargs(cfg)), cfg.search_seed)
    agent.prior = prior
    log.info("screening with a prior of %d policies scored by %s", len(prior.rewards), prior.source)
    return agent


def transfer_job(args: argparse.Namespace) -> int:
    """Zero-shot policy reuse: a saved agent walks this model's units once, saved policies are resampled onto it;
    each candidate is scored, the best saved as policy.json."""
    if not args.agent and not args.policy:
        raise UserError("transfer: give --agent agent.zip, --policy FILE, or both")
    ctx = prepare(args)
    cfg = ctx.cfg
    out = run_folder(args, f"{cfg.name}-transfer")
    for path in args.policy or []:  # a missing or malformed input fails before any training
        SparsityPolicy.load(path)
    if args.agent:
        PruningAgent.load(args.agent)
    base = baseline_of(ctx)
    graph = unit_graph(ctx, base.model)
    env = build_env(cfg, base.model, ctx.data, graph)
    candidates: list[tuple[str, SparsityPolicy]] = []
    if args.agent:
        candidates.append((f"agent {args.agent}", PruningAgent.load(args.agent, env).propose(env, deterministic=True)[0]))
    candidates += [(f"policy {path}", move_policy(SparsityPolicy.load(path), env, source=path))
                   for path in args.policy or []]
    rows = []
    for name, policy in candidates:
        result = env.evaluate(policy)
        policy.meta.update(source=name, accuracy=result.accuracy, macs_ratio=result.macs_ratio)
        rows.append({"source": name, "accuracy": result.accuracy, "macs_ratio": result.macs_ratio,
                     "reward": env.reward(result)})
        log.info("zero-shot %s: val acc %.4f at %.1f%% MACs", name, result.accuracy, 100 * result.macs_ratio)
    best = max(range(len(rows)), key=lambda i: rows[i]["reward"])
    uniform_result = env.evaluate(uniform(graph, env.macs_target, env.round_to, cfg.prune.max_ratio))
    uniform_beats(env, uniform_result, rows[best]["reward"], f"the zero-shot policy ({rows[best]['source']})",
                  "warm-start a search with it (search --agent/--policy)")
    out.mkdir(parents=True, exist_ok=True)
    candidates[best][1].save(out / "policy.json")
    summary = {"agent": args.agent, "policies": args.policy or [], "model": cfg.model.name, **rows[best],
               "candidates": rows, "uniform_accuracy": uniform_result.accuracy,
               "uniform_macs_ratio": uniform_result.macs_ratio, "uniform_reward": env.reward(uniform_result)}
    write_json(summary, out / "transfer.json")
    log.info("zero-shot policy for %s: %s, val acc %.4f at %.1f%% MACs (uniform: %.4f at %.1f%%); saved %s",
             cfg.model.name, rows[best]["source"], rows[best]["accuracy"], 100 * rows[best]["macs_ratio"],
             uniform_result.accuracy, 100 * uniform_result.macs_ratio, out / "policy.json")
    return 0


def check_storage_path(folder: Path) -> None:
    """Make the folder Tune keeps its experiment in (a cluster's shared folder may not exist yet), or say why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--storage-path: cannot make folder {folder} ({exc.strerror or exc})") from None


def searched_identity(cfg, graph) -> dict:
    """What a search's evaluations are of: the model (its units) and the data (not its folder, which may differ
    between the machines of a cluster). Kept in search.json so that a resume cannot mix two searches in one study."""
    return {"model_fingerprint": graph.fingerprint, "model": cfg.model.name,
            "data": cfg.data.model_dump(mode="json", exclude={"path"})}


def check_same_search(state: dict, searched: dict, run: Path) -> None:
    """A resumed search must search what it started with (states written before these keys were kept pass)."""
    if "model_fingerprint" in state and state["model_fingerprint"] != searched["model_fingerprint"]:
        raise UserError(f"--resume: {run} searched {state.get('model')} (units fingerprint {state['model_fingerprint']}), "
                        f"this config gives {searched['model']} ({searched['model_fingerprint']}); give the config "
                        "the search started with")
    if "data" in state and state["data"] != searched["data"]:
        raise UserError(f"--resume: {run} searched data {state['data']}, this config gives {searched['data']}; give "
                        "the config the search started with")


@contextmanager
def discarded_if_setup_stops(out: Path, created: bool, claimed: bool) -> Iterator[None]:
    """A run folder this call made goes again when a user error (a bad --storage, --agent or latency table found
    after the sweep wrote into it) or Ctrl-C stops the set-up: nothing was evaluated, and the rerun must not find
    'already holds a search' with no Tune experiment to resume. In a folder that was there before, the search.json
    this call claimed goes."""
    try:
        yield
        raise_if_interrupted()  # one that the set-up's libraries swallowed
    except (UserError, KeyboardInterrupt):
        if created and out.exists():
            shutil.rmtree(out)
        elif claimed:
            (out / "search.json").unlink(missing_ok=True)
        raise


def check_backend_flags(args: argparse.Namespace) -> None:
    """--address and --resume run on Ray; a --backend local beside them was dropped without a word."""
    for flag, given, what in (("--address", args.address, "joins a Ray cluster"),
                              ("--resume", args.resume, "continues Ray Tune's saved experiment")):
        if given and args.backend == "local":
            raise UserError(f"--backend local and {flag}: {flag} {what}; leave out --backend local")


RAY_ONLY_SETTINGS = {"concurrency": 1, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
"""search.* settings of Ray's trials, with the value that says what the local backend does anyway."""


def warn_of_ray_settings(cfg: RunConfig, backend: str) -> None:
    """The local backend scores one policy at a time in this process: a concurrency or a trial's resources that the
    config sets were dropped without a word, so `--backend local search.concurrency=4` looked parallel and was not."""
    given = {k: getattr(cfg.search, k) for k, same in RAY_ONLY_SETTINGS.items()
             if backend == "local" and k in cfg.search.model_fields_set and getattr(cfg.search, k) != same}
    if given:
        log.warning("%s: the local backend evaluates one policy at a time in this process, with `threads` torch "
                    "threads on `device`; %s apply to the Ray backend only",
                    ", ".join(f"search.{k}={v}" for k, v in given.items()), " and ".join(f"search.{k}" for k in given))


@dataclass(frozen=True)
class SearchPlan:
    """Where the search runs and what it loads, settled by checks made before any training or file."""
    backend: str
    address: str | None
    field: str
    """Where the address came from (`--address` or `RAY_ADDRESS`), named in its errors."""
    prior: SourceRewards | None
    table: LatencyTable | None


def plan_search(args: argparse.Namespace, cfg: RunConfig) -> SearchPlan:
    """Check every flag and file a search names before any training: a wrong one found after the baseline's
    training (or by Ray, which retries a wrong address forever) cost minutes."""
    check_searcher(cfg.search.searcher)
    if not args.resume:  # a resume keeps the target its search started with
        check_one_search_target(cfg)
    warn_if_warmup_fills_the_budget(cfg, warm_started=bool(args.agent))
    backend = "ray" if args.resume or args.address else (args.backend or cfg.search.backend)
    address, field = address_of_environment(args.address) if backend == "ray" else (None, "--address")
    if field == "RAY_ADDRESS":
        log.info("joining the Ray cluster at RAY_ADDRESS=%s (unset RAY_ADDRESS to run Ray embedded)", address)
    check_ray_address(address, field=field)
    check_seed_policies(args.policy, cfg.search.searcher)
    check_warm_agent(getattr(args, "agent", None), cfg.search.searcher)
    if cfg.search.searcher in AGENT_NAMES:
        check_agent_kwargs(cfg.agent)
    prior = load_prior(args, cfg)
    table = LatencyTable.load(cfg.env.latency_table) if cfg.env.latency_table else None
    warn_of_ray_settings(cfg, backend)
    return SearchPlan(backend, address, field, prior, table)


def connect_to_ray(ctx: Context, plan: SearchPlan) -> None:
    """Join (or start) Ray before any file or training: a cluster that refuses us (token, version) or has no room
    for one trial fails here."""
    from search.ray_backend import check_trial_fits, connect

    cfg = ctx.cfg
    connect(plan.address, field=plan.field)
    check_trial_fits(cfg.search.cpus_per_trial, cfg.search.gpus_per_trial, embedded=not plan.address)
    if ctx.device.type == "cuda" and cfg.search.gpus_per_trial <= 0:
        log.warning("the trials evaluate on the CPU: search.gpus_per_trial is 0 (the final pass runs on %s); give "
                    "each trial a share of a GPU with search.gpus_per_trial (e.g. 0.5)", ctx.device)


@dataclass
class SearchSetup:
    """What the set-up built for the search, its report and the final pass to share."""
    base: Baseline
    graph: UnitGraph
    evaluator: Evaluator
    """Built once (rankings, Taylor gradients, fixed BN batches): the sweep, the search and the final pass share it."""
    sink: EvaluationSink
    env: LayerPruningEnv
    warm: PruningAgent | None
    seeds: list[SparsityPolicy]
    start: float
    """perf_counter() as the search proper began (after the baseline, the sweep and the latency table)."""
    tune_search: tuple | None
    """Ray only: (Tune search algorithm, param space, number of trials), built in the set-up so that its errors
    (an agent's settings, a seed policy) leave no half-made run."""


def set_up_search(args: argparse.Namespace, ctx: Context, plan: SearchPlan, out: Path, state: dict) -> SearchSetup:
    """Baseline, units, evaluator, MACs target, the study and `search.json`: everything a search needs before its
    first evaluation (inside `discarded_if_setup_stops`, so a failure here leaves no half-made run)."""
    cfg = ctx.cfg
    base = baseline_of(ctx)
    graph = unit_graph(ctx, base.model)
    if plan.table is not None:  # another model's table fails before the sweep writes the run folder
        plan.table.check(graph, cfg.prune.round_to)
    searched = searched_identity(cfg, graph)
    if args.resume:
        check_same_search(state, searched, out)
    state.update(searched)
    evaluator = Evaluator(base.model, ctx.data, graph, EvalSettings.from_config(cfg))
    if args.resume:
        cfg.env.macs_target = state.get("macs_target", cfg.env.macs_target)  # the target the search started with
    elif cfg.sweep.accuracy_floor is not None:
        cfg.env.macs_target = target_from_floor(cfg, evaluator, out)
    state["macs_target"] = cfg.env.macs_target
    sink = EvaluationSink(state["storage"], state["study_name"], graph.names, cfg.search.searcher,
                          cfg.search.evaluations, ctx.show_progress, new=not args.resume)
    out.mkdir(parents=True, exist_ok=True)
    sink.recorder  # open (and create) the study now: a bad --storage fails before any work
    if sink.study_name != state["study_name"]:
        log.info("%s already holds a study named %s (another search); this one records as %s",
                 shown_storage(state["storage"]), state["study_name"], sink.study_name)
        state["study_name"] = sink.study_name
    atomic_write_text(out / "search.json", json.dumps(state, indent=2))  # read whole by a search starting here
    if cfg.env.latency_weight > 0 and cfg.env.latency_table is None:  # measured once per run folder, kept on resume
        table_path = out / "latency_table.json"
        if not table_path.is_file():
            measure_table(cfg, base.model, graph).save(table_path)
        cfg.env.latency_table = str(table_path)
    start = time.perf_counter()
    warm = with_prior(load_warm_agent(args, cfg, graph), plan.prior, cfg, graph)
    # inside the set-up: an unreachable target (env.r_max) or a bad seed policy left a search.json and an empty
    # study behind, and the rerun read 'already holds a search'
    env = build_env(cfg, base.model, ctx.data, graph,
                    **({"evaluator": evaluator} if plan.backend == "local" else {"deferred": True}))
    seeds = load_seed_policies(args.policy, env)
    tune_search = None
    if plan.backend == "ray":
        from search.ray_backend import search_algorithm

        tune_search = search_algorithm(cfg, env, base.model, graph, out / "agent", warm, seeds)
    return SearchSetup(base, graph, evaluator, sink, env, warm, seeds, start, tune_search)


def recorded_count(sink: EvaluationSink) -> int:
    return len(sink.recorder.study.get_trials(deepcopy=False))


def search_locally(cfg: RunConfig, setup: SearchSetup, out: Path, state: dict) -> None:
    """One policy at a time in this process; the agent is saved beside the run."""
    env, graph, sink = setup.env, setup.graph, setup.sink
    try:
        _, agent = run_local(cfg, setup.base.model, env, agent=setup.warm, seeds=setup.seeds,
                             on_evaluation=lambda e: sink(
                                 f"local-{e.episode}",
                                 {"ratios": e.policy.ratios, "accuracy": e.accuracy, "macs_ratio": e.macs_ratio,
                                  "reward": e.reward, "episode": e.episode,
                                  **{k: e.extra[k] for k in SCREEN_ATTRS if k in e.extra},
                                  **latency_attr(env, e.policy.kept(graph, env.round_to))}))
        raise_if_interrupted()
    except KeyboardInterrupt:
        sink.close()
        log.warning("search stopped after %d recorded evaluations (kept in %s for review); the local backend cannot "
                    "be resumed: search again with another --out (on Ray, --resume continues a search)",
                    recorded_count(sink), state["storage"])
        raise
    if agent is not None:
        agent.save(out / "agent", env)


def search_on_ray(args: argparse.Namespace, ctx: Context, setup: SearchSetup, out: Path, state: dict) -> float:
    """Every evaluation a Tune trial (started, or continued with --resume); returns Tune's seconds and leaves
    `setup.env` scoring in this process, for the report."""
    from search import ray_backend

    cfg = ctx.cfg
    searcher, space, samples = setup.tune_search
    tune_start = time.perf_counter()
    experiment = state.get("experiment", EXPERIMENT_IN_RUN)  # states written before it was kept: the default
    try:
        ray_backend.run_tune(cfg, ray_backend.trainable(cfg, setup.evaluator), searcher, space, samples,
                             Path(state["storage_path"]), ray_backend.RecordingCallback(setup.sink),
                             resume=bool(args.resume), name=experiment)
    except KeyboardInterrupt:
        setup.sink.close()
        recorded = recorded_count(setup.sink)
        if ray_backend.experiment_saved(Path(state["storage_path"]), experiment):
            log.warning("search stopped after %d recorded evaluations; continue it with: prunepilot search %s "
                        "--resume %s", recorded, args.config, out)
        else:  # the hint above led to '--resume: no restorable Tune experiment'
            log.warning("search stopped after %d recorded evaluations, before Ray Tune first saved its experiment, so "
                        "--resume has nothing to continue: search again with another --out (or delete %s)",
                        recorded, out)
        raise
    tune_seconds = time.perf_counter() - tune_start
    setup.env = build_env(cfg, setup.base.model, ctx.data, setup.graph, evaluator=setup.evaluator)
    return tune_seconds


def report_and_final_pass(args: argparse.Namespace, ctx: Context, setup: SearchSetup, out: Path, state: dict,
                          backend: str, tune_seconds: float | None) -> None:
    """The search's report, then (search.final_pass) the progressive pass on its best policy; a Ctrl-C in either
    says how to run the pass that did not run."""
    cfg = ctx.cfg
    passing = False  # whether a Ctrl-C stopped the final pass or came (held) while the report was written
    try:
        # held: a Ctrl-C in the report's writing left a search that --resume finishes, and no word of it
        with interrupts_deferred("writing the search's report"):
            best, section = write_search_report(
                cfg, setup.env, setup.graph, setup.sink, out, state=state, backend=backend,
                resumed=bool(args.resume), wall=time.perf_counter() - setup.start, tune_seconds=tune_seconds,
                baseline=setup.base.identity())
        if cfg.search.final_pass:  # search.seed: repeats differ in fine-tuning order too, not only in the search
            passing = True
            final_pass(ctx, setup.base, setup.graph, best, out, cfg.search_seed, extra_report=section,
                       evaluator=setup.evaluator)
    except KeyboardInterrupt:
        if cfg.search.final_pass:
            # the local backend cannot resume: prune runs the same pass (same config and overrides) into a subfolder
            prune = shlex.join(["prunepilot", "prune", args.config, "--policy", str(out / "best_policy.json"),
                                "--out", str(out / "final"), *args.overrides])
            again = (f"prunepilot search {args.config} --resume {out} (Tune's finished search is not run again)"
                     if backend == "ray" else prune)
            log.warning("%s; the search's %d evaluations and its best policy are kept in %s; run the pass %s: %s",
                        "final pass stopped" if passing else "stopped before the final pass",
                        recorded_count(setup.sink), out, "again with" if passing else "with", again)
        raise


def search_job(args: argparse.Namespace) -> int:
    check_backend_flags(args)
    use_stored_overrides(args)
    ctx = prepare(args)
    cfg = ctx.cfg
    plan = plan_search(args, cfg)
    out, state = prepare_run_folder(args, cfg.name, plan.backend)
    if args.resume and cfg.search.final_pass and (out / "search_summary.json").is_file() and \
            (out / "summary.json").is_file():  # a resubmitted job's --resume ran the whole final pass again
        log.info("%s: the search and its final pass are finished; nothing to resume (report: %s)", out,
                 out / "report.md")
        return 0
    created = not out.exists()
    # a resume claims its folder before connecting (seconds for an embedded Ray); a new search once it made it
    release = hold_driver_claim(out, args.config) if args.resume else (lambda: None)
    try:
        if args.storage_path and not args.resume:  # Tune would fail with a pyarrow traceback after the set-up
            check_storage_path(Path(state["storage_path"]))
        if plan.backend == "ray":
            connect_to_ray(ctx, plan)
        if not args.resume:  # outside the discarding below: a claim refused leaves the other search's folder alone
            claim_run_folder(out)
            release = hold_driver_claim(out, args.config)
        with discarded_if_setup_stops(out, created, claimed=not args.resume):
            setup = set_up_search(args, ctx, plan, out, state)
        tune_seconds = None
        if plan.backend == "local":
            search_locally(cfg, setup, out, state)
        else:
            tune_seconds = search_on_ray(args, ctx, setup, out, state)
        report_and_final_pass(args, ctx, setup, out, state, plan.backend, tune_seconds)
    finally:
        release()
    return 0
