"""The Ray Tune backend: trials evaluate policies on the cluster, the driver records and decides.

Embedded Ray by default (dashboard off); `--address` joins an existing cluster. Tune owns
parallelism, placement, retries (`FailureConfig`), experiment state and resume (`Tuner.restore`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from ray._private import utils as ray_private_utils
from ray import tune
from ray.tune import Callback
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from agents.agent import PruningAgent
from agents.baselines import RULES, rule_policy
from agents.sb3_agents import BUILDERS
from envs.factory import env_kwargs
from envs.layer_pruning import LayerPruningEnv
from pruning.config import RunConfig
from pruning.errors import UserError
from pruning.evaluate import Evaluator
from pruning.policy import SparsityPolicy
from pruning.units import UnitGraph
from search.agent_searcher import AgentSearcher
from search.recording import SCREEN_ATTRS
from search.reuse import check_seeding
from search.termination import interrupt, interrupted, interrupts_deferred, keep_sigterm_handler
from search.trial import TrialPayload, evaluate_policy_trial

log = logging.getLogger("prunepilot")
CHECKPOINT_S = 5


def connect(address: str | None, num_cpus: int | None = None, field: str = "--address") -> None:
    """Join `address`, or start Ray embedded in this process with its dashboard off.

    Embedded means a new instance (`address="local"`): left to itself, `ray.init()` joined any cluster that
    `ray start` had left running on this machine, while the search went on believing it ran embedded."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        with interrupts_deferred("Ray's start"), sigterm_handler_kept():
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                log.info("starting Ray embedded in this process (--address joins a cluster)")
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
                         log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("; if the cluster was started under RAY_AUTH_MODE=token, this shell needs RAY_AUTH_MODE=token and the "
                "cluster's token (RAY_AUTH_TOKEN) too" if os.environ.get("RAY_AUTH_MODE") != "token" else
                "; check that RAY_AUTH_TOKEN is the cluster's token")
        raise UserError(f"{field}: cannot connect to Ray at {address!r} ({exc}){hint}") from None
    keep_sigterm_handler()  # the driver's handler printed a stack dump and ended the job with nothing said


@contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """`ray.init` first installs a driver SIGTERM handler of its own (`sys.exit(15)`): a SIGTERM while Ray started
    ended the job with no word (exit code 15), or its SystemExit was dropped in an at-fork hook and the job ran to
    its end. Ray installs it through `ray._private.utils.set_sigterm_handler`, held off here while it starts."""
    installer = getattr(ray_private_utils, "set_sigterm_handler", None)
    if installer is None:  # another Ray: keep_sigterm_handler still puts ours back once it has started
        yield
        return
    ray_private_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_private_utils.set_sigterm_handler = installer


def check_trial_fits(cpus: float, gpus: float, embedded: bool) -> None:
    """A trial that no node can hold would wait forever (Tune only warns each minute): refused on the embedded Ray,
    which cannot grow; on a cluster, said once, since an autoscaler or a `ray start` may still add such a node."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    most_cpus, most_gpus = (max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU"))
    field = "search.gpus_per_trial" if gpus > most_gpus else "search.cpus_per_trial"
    where = "this machine has" if embedded else f"the cluster's {len(nodes)} node(s) have at most"
    text = (f"{field}: a trial asks for {cpus:g} CPU(s) and {gpus:g} GPU(s), but {where} {most_cpus:g} CPU(s) and "
            f"{most_gpus:g} GPU(s)" + ("" if embedded else " each"))
    if embedded:
        raise UserError(f"{text}; lower it, or join a cluster that has such a node with --address")
    log.warning("%s: the search waits until such a node joins", text)


def evaluation_key(trial: Any) -> str:
    """The trial's creation index in the experiment ('#7' from experiment tag '7_ratios=...').

    The index, unlike the trial id, survives a resume from an experiment checkpoint taken before
    the trial was created: Tune then creates it again, under a new id but the same index, and the
    study keeps the evaluation once.
    """
    index = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return f"#{index}" if index.isdigit() else trial.trial_id


class RecordingCallback(Callback):
    """Driver-side: every finished or failed trial goes to `sink` once (picklable: Tune saves it with the run)."""

    def __init__(self, sink: Callable[[str, dict, bool], None]):
        self.sink = sink

    def _emit(self, trial: Any, failed: bool) -> None:
        result = dict(trial.last_result or {})
        for key in ("ratios", *SCREEN_ATTRS):  # what the searcher put beside the ratios (a screen's prediction)
            if key in trial.config:
                result.setdefault(key, trial.config[key])
        result["trial_id"] = trial.trial_id
        self.sink(evaluation_key(trial), result, failed)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._emit(trial, failed="reward" not in (trial.last_result or {}))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._emit(trial, failed=True)


def search_algorithm(cfg: RunConfig, env: LayerPruningEnv, model: Any, graph: UnitGraph, agent_path: Path,
                     agent: PruningAgent | None = None, seeds: list[SparsityPolicy] | None = None,
                     ) -> tuple[Any, dict, int]:
    """(Tune search algorithm, param space, number of trials) for `cfg.search.searcher`; `seeds` go first (agents)."""
    name, budget, seed = cfg.search.searcher, cfg.search.evaluations, cfg.search_seed
    space = {"ratios": {u: tune.uniform(env.r_min, high) for u, high in zip(graph.names, env.unit_max)}}
    if name in BUILDERS:
        if name == "ppo":
            raise UserError("search.searcher: ppo learns on-policy from whole rollouts; use it with --backend local")
        check_seeding(name, seeds)
        agent = agent or PruningAgent.create(cfg.agent, env, seed)
        # num_samples -1: the searcher ends the search (FINISHED), after sending failed trials again
        searcher = AgentSearcher(agent, env, budget, save_to=str(agent_path), resends=cfg.search.max_failures,
                                 seeds=seeds, imitate=cfg.search.imitate_seeds)
        return searcher, {}, -1
    check_seeding(name, seeds)
    if name == "tpe":
        import optuna

        return OptunaSearch(metric="reward", mode="max", sampler=optuna.samplers.TPESampler(seed=seed)), space, budget
    if name == "random":
        return BasicVariantGenerator(random_state=seed), space, budget
    if name in RULES:
        policy = rule_policy(name, model, graph, env.macs_target, env.round_to, cfg.prune.max_ratio)
        return BasicVariantGenerator(), {"ratios": dict(policy.ratios)}, 1
    raise UserError(f"search.searcher: unknown searcher {name!r}")


def trial_device(device: str, gpus_per_trial: float) -> str:
    """Where a trial evaluates: on the GPU Ray gave it, else on the CPU, whatever the driver uses.

    The driver's own device was sent before: with a GPU on the driver and `search.gpus_per_trial: 0`, a trial asked
    for 'cuda' in a worker that Ray gave no GPU (hidden from it, or shared with the trials beside it unaccounted),
    and a driver without a GPU sent 'cpu' to workers that Ray had given one. Ray shows a worker its own GPUs from
    index 0, so 'cuda:N' on the driver is 'cuda' in a trial.
    """
    if gpus_per_trial <= 0 or device == "cpu":
        return "cpu"
    return "cuda"


def trainable(cfg: RunConfig, evaluator: Evaluator) -> Any:
    """The trial function with its payload (the driver's evaluator, on the CPU) in the object store."""
    # a fresh key per search: a worker of a long-lived cluster that served another search rebuilds its state
    payload = TrialPayload(key=uuid.uuid4().hex, evaluator=evaluator.to("cpu"), env_kwargs=env_kwargs(cfg),
                           threads=max(1, int(cfg.search.cpus_per_trial)),
                           device=trial_device(cfg.device, cfg.search.gpus_per_trial))
    resources = {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(evaluate_policy_trial, payload=payload), resources)


def run_tune(cfg: RunConfig, fn: Any, searcher: Any, space: dict, samples: int, storage_path: Path,
             callback: RecordingCallback, resume: bool, name: str) -> None:
    """Start the Tune experiment `storage_path/name`, or continue it from its saved state when `resume`."""
    # Tune saves the experiment state (trials and searcher) at most every CHECKPOINT_S. With 0 it saves at every
    # controller step (10 per second), which cost the driver more CPU than the evaluations could spare. A resume
    # from a state up to CHECKPOINT_S old re-runs the trials that ended since; the study keys evaluations by
    # creation index (`evaluation_key`), so each is recorded once.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(CHECKPOINT_S)
    experiment = storage_path / name
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise UserError(f"--resume: no restorable Tune experiment at {experiment}: the search stopped before "
                            f"Tune first saved it (within {CHECKPOINT_S} s of its start), so there is nothing to continue: "
                            "start the search again without --resume, in another folder")
        tuner = tune.Tuner.restore(str(experiment), trainable=fn, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            fn, param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, metric="reward", mode="max", num_samples=samples,
                                        max_concurrent_trials=cfg.search.concurrency, reuse_actors=True,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_path.resolve()), verbose=0,
                                      callbacks=[callback], log_to_file=True,
                                      failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    if fit_was_interrupted(tuner):
        raise KeyboardInterrupt  # the saved experiment is what --resume continues; no final pass on half a search


def experiment_saved(storage_path: Path, name: str) -> bool:
    """Whether Tune has saved the experiment `storage_path/name`, so that `--resume` can continue it (a Ctrl-C in
    its first seconds stops it before that)."""
    return tune.Tuner.can_restore(str(storage_path / name))


def fit_was_interrupted(tuner: Any) -> bool:
    """Run `tuner.fit()`; True when Ctrl-C (SIGINT) stopped it.

    Tune catches SIGINT itself, saves the experiment and returns as if the search were done; the only trace it
    leaves is that it puts back the SIGINT handler it found (after a run that ends normally it keeps its own). So our
    handler goes in first and is looked for afterwards.
    """
    if threading.current_thread() is not threading.main_thread() or int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")):
        tuner.fit()  # Tune installs no handler here: a Ctrl-C raises KeyboardInterrupt by itself
        return False

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, interrupt)
    try:
        tuner.fit()  # a Ctrl-C before Tune's handler is in raises KeyboardInterrupt where Tune may drop it: latched
        return signal.getsignal(signal.SIGINT) is interrupt or interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
