"""The local backend: one process, no Ray; the env evaluates each policy itself (for debugging and small models)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import optuna
from torch import nn

from agents.agent import MAX_EPISODES_PER_EVALUATION, Evaluation, PruningAgent
from agents.baselines import RULES, random_search, rule_policy
from agents.sb3_agents import BUILDERS
from envs.layer_pruning import LayerPruningEnv
from pruning.config import RunConfig
from pruning.errors import UserError
from pruning.policy import SparsityPolicy
from search.reuse import check_seeding

SEARCHERS = (*sorted(BUILDERS), "random", "tpe", *sorted(RULES))


def check_searcher(name: str, field: str = "search.searcher") -> None:
    if name not in SEARCHERS:
        raise UserError(f"{field}: unknown searcher {name!r}; expected one of {list(SEARCHERS)}")


def scored(env: LayerPruningEnv, episode: int, policy: SparsityPolicy) -> Evaluation:
    result = env.evaluate(policy)
    return Evaluation(episode, policy, result.accuracy, result.macs_ratio, env.reward(result))


def tpe_search(env: LayerPruningEnv, evaluations: int, seed: int,
               on_evaluation: Callable[[Evaluation], None]) -> list[Evaluation]:
    """Optuna's TPE over per-unit ratios in [r_min, r_max], each clamped to the budget like an agent's actions.

    A proposal that repeats a scored policy is told its known score and does not count against the budget.
    """
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    results: list[Evaluation] = []
    for _ in range(evaluations * MAX_EPISODES_PER_EVALUATION):
        if len(results) == evaluations:
            break
        trial = study.ask()
        ratios = [trial.suggest_float(u.name, env.r_min, high) for u, high in zip(env.units, env.unit_max)]
        policy = env.play_ratios(ratios)[0]
        repeat = env.has_scored(policy)
        evaluation = scored(env, len(results), policy)
        study.tell(trial, evaluation.reward)
        if not repeat:
            results.append(evaluation)
            on_evaluation(evaluation)
    return results


def seeded_agent_search(agent: PruningAgent, env: LayerPruningEnv, budget: int, seeds: list[SparsityPolicy],
                        on_evaluation: Callable[[Evaluation], None], imitate: int = 0) -> list[Evaluation]:
    """The seed policies first (scored, and learned from as demonstrations), then the agent's own episodes.

    With `imitate` > 0 the actor is first cloned onto the seeds (`PruningAgent.imitate`).
    """
    results: list[Evaluation] = []
    demonstrations = [agent.demonstrate(env, policy) for policy in seeds]
    agent.imitate([transitions for _, transitions in demonstrations], imitate)
    for played, transitions in demonstrations:
        if len(results) == budget or env.has_scored(played):
            continue
        evaluation = scored(env, len(results), played)
        agent.observe_episode(transitions, evaluation.reward, demonstration=True)
        agent.remember(env, played, evaluation.reward)
        results.append(evaluation)
        on_evaluation(evaluation)
    offset = len(results)

    def renumbered(evaluation: Evaluation) -> Evaluation:
        return dataclasses.replace(evaluation, episode=evaluation.episode + offset)

    own = [renumbered(e) for e in agent.learn(env, budget - offset, lambda e: on_evaluation(renumbered(e)))]
    return results + own


def run_local(cfg: RunConfig, model: nn.Module, env: LayerPruningEnv, on_evaluation: Callable[[Evaluation], None],
              agent: PruningAgent | None = None, seeds: list[SparsityPolicy] | None = None,
              ) -> tuple[list[Evaluation], PruningAgent | None]:
    """Run `cfg.search.searcher` for `cfg.search.evaluations` evaluations on `env` (standalone mode).

    `seeds` (agent searchers only) are evaluated first and the agent learns from them.
    """
    name, budget, seed = cfg.search.searcher, cfg.search.evaluations, cfg.search_seed
    check_searcher(name)
    check_seeding(name, seeds)
    if name in BUILDERS:
        agent = agent or PruningAgent.create(cfg.agent, env, seed)
        return seeded_agent_search(agent, env, budget, seeds or [], on_evaluation, cfg.search.imitate_seeds), agent
    check_seeding(name, seeds)
    if name == "random":
        return random_search(env, budget, seed, on_evaluation), None
    if name == "tpe":
        return tpe_search(env, budget, seed, on_evaluation), None
    policy = rule_policy(name, model, env.graph, env.macs_target, env.round_to, cfg.prune.max_ratio)
    evaluation = scored(env, 0, policy)
    on_evaluation(evaluation)
    return [evaluation], None
