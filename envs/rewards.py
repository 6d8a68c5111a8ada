"""Reward functions, selected by name: accuracy and compute of one evaluated policy -> scalar reward."""

from __future__ import annotations

import math
from typing import Callable

RewardFn = Callable[[float, float, float, float], float]
"""(accuracy, macs_ratio, macs, lam) -> reward."""


def accuracy_minus_compute(accuracy: float, macs_ratio: float, macs: float, lam: float) -> float:
    """R = accuracy - lambda * MACs ratio: the user's formulation, trading accuracy against compute."""
    return accuracy - lam * macs_ratio


def amc_error(accuracy: float, macs_ratio: float, macs: float, lam: float) -> float:
    """AMC's resource-constrained reward R = -error; the budget clamp guarantees the compute side."""
    return -(1.0 - accuracy)


def amc_error_log_macs(accuracy: float, macs_ratio: float, macs: float, lam: float) -> float:
    """AMC's accuracy-guaranteed reward R = -error * log(MACs): prefers fewer MACs at the same error."""
    return -(1.0 - accuracy) * math.log(max(macs, 1.0))


def latency_penalty(ratio: float, weight: float, target: float | None) -> float:
    """What a policy's predicted latency ratio costs: weight * max(0, ratio / target - 1), or weight * ratio."""
    return weight * (max(0.0, ratio / target - 1.0) if target else ratio)


def describe_latency_penalty(weight: float, target: float | None) -> str:
    """The latency term as reports write it; empty when it is off."""
    if weight == 0:
        return ""
    return f" minus {weight:g} x " + (f"max(0, L / {target:g} - 1)" if target else "L")


REWARDS: dict[str, RewardFn] = {
    "accuracy_minus_compute": accuracy_minus_compute,
    "amc_error": amc_error,
    "amc_error_log_macs": amc_error_log_macs,
}


def get_reward(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"`reward` must be one of {sorted(REWARDS)}, got {name!r}") from None
