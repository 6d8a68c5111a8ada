"""Policy reuse across models: a policy saved for one model, made into an episode of another model's env.

The policy is resampled onto this model's units by kind and relative depth (`SparsityPolicy.resampled`),
shifted by one common offset onto the env's MACs target (`fit_to_macs`; with `env.budget: cap` only when
it keeps more than the target), then played through the env like an agent's actions, so the budget
clamp applies as to every searcher's proposals.
"""

from __future__ import annotations

from envs.layer_pruning import LayerPruningEnv
from pruning.errors import UserError
from pruning.policy import SparsityPolicy, fit_to_macs

SEEDING_SEARCHERS = ("ddpg", "td3", "sac")
"""Searchers that learn from a seed policy's score (off-policy agents with an episode replay buffer)."""


def move_policy(policy: SparsityPolicy, env: LayerPruningEnv, source: str = "policy") -> SparsityPolicy:
    """`policy` (for this model or another) as a policy of env's model at env's MACs target."""
    if policy.model_fingerprint == env.graph.fingerprint:
        policy.validate(env.graph, 1.0, source=source)
    else:
        policy = policy.resampled(env.graph, source=source)
    if env.budget == "exact" or policy.macs_ratio(env.graph, env.round_to) > env.macs_target:
        policy = fit_to_macs(policy, env.graph, env.macs_target, env.round_to, env.r_max)
    moved = env.play_ratios(list(policy.vector(env.graph)))[0]
    moved.meta.update(policy_source=source)
    return moved


def check_seeding(searcher: str, seeds: list | None) -> None:
    """Seeds need a searcher that learns from their scores; any other would silently drop them."""
    if seeds and searcher not in SEEDING_SEARCHERS:
        raise UserError(f"--policy: seeding a search needs an agent that learns from a policy's score "
                        f"({', '.join(SEEDING_SEARCHERS)}), but search.searcher is {searcher!r}")


def check_seed_policies(paths: list[str] | None, searcher: str) -> None:
    """Fail early (before any training) on `--policy` files a search cannot use."""
    check_seeding(searcher, paths)
    for path in paths or []:
        SparsityPolicy.load(path)


def load_seed_policies(paths: list[str] | None, env: LayerPruningEnv) -> list[SparsityPolicy]:
    """The `--policy` files of a search, moved onto env's model and MACs target."""
    return [move_policy(SparsityPolicy.load(path), env, source=path) for path in paths or []]
