"""The RL agent as a Ray Tune `Searcher` (modelled on Ray's `OptunaSearch`).

`suggest()` rolls the agent's current actor over the environment (deferred mode: no evaluation)
and returns the policy as the trial config; `on_trial_complete()` hands the reward back, the
episode's transitions go into the replay buffer with that reward, and the agent trains.
Per-trial state lives in a dict keyed by trial id; `save`/`restore` keep the agent, its replay
buffer and noise schedule, so a resumed search continues where it stopped.

A proposal that repeats a scored policy (same kept channels) is not sent out: the agent learns from
the known reward and proposes again, so repeats do not spend the evaluation budget. As in local mode,
an agent that has played 10 episodes per evaluation of its budget has converged, and the search ends.

Seed policies (`seeds`: saved policies moved onto this model) are sent first; the agent learns from
their scores as demonstrations (`PruningAgent.observe_episode(demonstration=True)`).

A trial that ends in error after Tune's own retries (Tune 2.60 does not retry a trial whose reused
actor died between two trials) is sent again as a new trial, up to `resends` times per policy, so a
dead worker does not cost the search an evaluation. Tune must then ask for trials until the searcher
says FINISHED (`num_samples=-1`).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, NamedTuple

from ray.tune.search import Searcher

from agents.agent import MAX_EPISODES_PER_EVALUATION, PruningAgent
from envs.layer_pruning import LayerPruningEnv
from pruning.policy import SparsityPolicy

log = logging.getLogger("prunepilot")


class Proposal(NamedTuple):
    """A trial's episode: its transitions, the policy key, the trial config; a seed's is a demonstration."""

    transitions: list[tuple]
    key: str
    config: dict
    demonstration: bool = False
    policy: SparsityPolicy | None = None
    """The proposed policy, for the agent's reward model once it is scored (`agent.candidates` > 1)."""


class AgentSearcher(Searcher):
    def __init__(self, agent: PruningAgent, env: LayerPruningEnv, budget: int, metric: str = "reward",
                 mode: str = "max", save_to: str | None = None, resends: int = 2,
                 seeds: list[SparsityPolicy] | None = None, imitate: int = 0):
        super().__init__(metric=metric, mode=mode)
        self.save_to = save_to
        if not env.deferred:
            raise ValueError("AgentSearcher needs a deferred env: rewards come from the trials")
        self.agent, self.env, self.budget = agent, env, budget
        self.live: dict[str, Proposal] = {}
        """In-flight trials."""
        self.resend: list[Proposal] = []
        """Trials that ended in error, to be sent again as new trials."""
        self.failures: dict[str, int] = {}
        """Failed attempts by policy key."""
        self.resends = resends
        self.suggested = 0
        self.completed: set[str] = set()
        self.rewards: dict[str, float] = {}
        """Reward of every scored policy, by policy key."""
        self.repeats = 0
        self.converged = False
        self.seeds: list[Proposal] = []
        """Seed policies not sent yet."""
        for policy in seeds or []:
            played, transitions = agent.demonstrate(env, policy)
            self.seeds.append(Proposal(transitions, played.key(env.graph, env.round_to), {"ratios": dict(played.ratios)},
                                       demonstration=True, policy=played))
        agent.imitate([seed.transitions for seed in self.seeds], imitate)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.resend:
            self.live[trial_id] = self.resend.pop(0)
            return self.live[trial_id].config
        if self.suggested >= self.budget:  # wait while a trial in flight may still fail and need sending again
            return None if self.live else self._finish()
        in_flight, waits = {live.key for live in self.live.values()}, 0
        while self.seeds:
            seed = self.seeds.pop(0)
            if seed.key not in self.rewards and seed.key not in in_flight:
                self.live[trial_id] = seed
                self.suggested += 1
                return seed.config
        while self.suggested + self.repeats < self.budget * MAX_EPISODES_PER_EVALUATION:
            policy, transitions = self.agent.propose(self.env, deterministic=False, exclude=self.rewards.keys() | in_flight)
            key = policy.key(self.env.graph, self.env.round_to)
            if key in self.rewards:
                self.agent.observe_episode(transitions, self.rewards[key], repeat=True)
                self.repeats += 1
            elif key in in_flight:  # no reward to learn from yet: ask again once a trial has finished
                waits += 1
                if waits == MAX_EPISODES_PER_EVALUATION:
                    return None
            else:
                # the screen's prediction rides along in the config, so the study records it beside the result
                self.live[trial_id] = Proposal(transitions, key, {"ratios": dict(policy.ratios), **self.agent.last_screen},
                                               policy=policy)
                self.suggested += 1
                return self.live[trial_id].config
        if not self.converged:
            log.info("the agent only repeats scored policies: search ends after %d evaluations", self.suggested)
        self.converged = True
        return None if self.live else self._finish()

    def _finish(self) -> str:
        """Nothing left to send or wait for (the budget is spent, or the agent converged): save the agent, end."""
        if self.save_to:
            self.agent.save(self.save_to, self.env)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.completed:
            log.warning("Received additional completion for trial %s, but it already finished; ignored", trial_id)
            return
        live = self.live.pop(trial_id, None)
        self.completed.add(trial_id)
        if live is None:
            return
        key = live.key
        if not error and result and self.metric in result:
            self.rewards[key] = float(result[self.metric])
            self.agent.observe_episode(live.transitions, self.rewards[key], demonstration=live.demonstration)
            if live.policy is not None:
                self.agent.remember(self.env, live.policy, self.rewards[key])
        else:  # a failed trial teaches the agent nothing; its policy is sent again while attempts remain
            self.failures[key] = self.failures.get(key, 0) + 1
            if self.failures[key] <= self.resends:
                log.warning("trial %s failed; its policy is sent again (attempt %d of %d)", trial_id,
                            self.failures[key] + 1, self.resends + 1)
                self.resend.append(live)

    def get_state(self) -> dict[str, Any]:
        return {"agent": self.agent.state_bytes(), "live": self.live, "suggested": self.suggested,
                "completed": self.completed, "episodes": self.agent.model._episode_num, "rewards": self.rewards,
                "repeats": self.repeats, "converged": self.converged, "resend": self.resend, "failures": self.failures,
                "seeds": self.seeds}

    def set_state(self, state: dict[str, Any]) -> None:
        self.agent = PruningAgent.from_state_bytes(state["agent"], self.env)
        self.live, self.suggested, self.completed = state["live"], state["suggested"], state["completed"]
        self.rewards, self.repeats, self.converged = state["rewards"], state["repeats"], state["converged"]
        self.resend, self.failures = state.get("resend", []), state.get("failures", {})
        self.seeds = state.get("seeds", [])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))
