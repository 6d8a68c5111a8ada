"""Pruning schedules as pure functions of (final ratio, steps), as torch-pruning's `linear_scheduler`."""

from __future__ import annotations


def cubic_schedule(final_ratio: float, steps: int) -> list[float]:
    """Zhu & Gupta (2017) gradual pruning: r_t = r_f * (1 - (1 - t/K)^3) for t = 0..K.

    Prunes fast while the network has redundancy to spare and slowly near the target.
    Returns K+1 values: 0 at t=0 and exactly `final_ratio` at t=K.
    """
    if steps < 1:
        raise ValueError(f"`steps >= 1` must hold, but got {steps=}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"`0 <= final_ratio <= 1` must hold, but got {final_ratio=}")
    return [final_ratio * (1.0 - (1.0 - t / steps) ** 3) for t in range(steps + 1)]

