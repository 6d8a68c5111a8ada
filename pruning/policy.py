"""`SparsityPolicy`: per-unit pruning ratios for one model, as validated data with a JSON form.

A policy carries the fingerprint of the model it was made for; applying it to another model
is an error unless it is first re-expressed as a depth profile (ratio vs relative depth)
and resampled onto the other model's units, which is how policies move between models.
A policy made from a unit graph also records each unit's relative depth and kind (`profile`), so
its file alone is enough to resample it onto another model (`resampled`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pruning.checkpoint import atomic_write_text, read_json_object, stable_hash
from pruning.errors import UserError
from pruning.units import UnitGraph

FORMAT = "prunepilot.sparsity-policy/1"


@dataclass
class SparsityPolicy:
    """Unit name -> fraction of the unit's channels (or weights) to remove."""

    ratios: dict[str, float]
    model_fingerprint: str
    mode: str = "structured"
    meta: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Unit name -> (relative depth in [0, 1], unit kind) in the model it was made for; empty if unknown."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, graph: UnitGraph, ratio: float, **meta: Any) -> "SparsityPolicy":
        return cls.from_ratios(graph, [float(ratio)] * len(graph.units), **meta)

    @classmethod
    def from_ratios(cls, graph: UnitGraph, ratios: list[float] | np.ndarray, **meta: Any) -> "SparsityPolicy":
        if len(ratios) != len(graph.units):
            raise ValueError(f"`ratios` must have one value per unit ({len(graph.units)}), got {len(ratios)}")
        return cls({u.name: float(r) for u, r in zip(graph.units, ratios)}, graph.fingerprint, graph.mode, dict(meta),
                   unit_profile(graph))

    @classmethod
    def from_depth_profile(cls, graph: UnitGraph, depths: list[float], ratios: list[float], **meta: Any) -> "SparsityPolicy":
        """Resample a ratio-vs-depth profile (depth in [0, 1]) onto `graph`'s units by linear interpolation."""
        targets = depth_positions(graph)
        return cls.from_ratios(graph, np.interp(targets, depths, ratios), **meta)

    # ------------------------------------------------------------------ queries
    def vector(self, graph: UnitGraph) -> np.ndarray:
        return np.array([self.ratios.get(u.name, 0.0) for u in graph.units], dtype=np.float64)

    def kept(self, graph: UnitGraph, round_to: int = 1) -> dict[str, int]:
        """Channels (structured) or non-zero weights (unstructured) each unit keeps."""
        step = round_to if self.mode == "structured" else 1
        return {u.name: graph.kept(u, self.ratios.get(u.name, 0.0), step) for u in graph.units}

    def macs_ratio(self, graph: UnitGraph, round_to: int = 1) -> float:
        return graph.macs(self.kept(graph, round_to)) / graph.dense_macs

    def depth_profile(self, graph: UnitGraph) -> tuple[list[float], list[float]]:
        """(relative depth of each unit, its ratio): the model-independent form used for reuse."""
        return list(depth_positions(graph)), list(self.vector(graph))

    def resampled(self, graph: UnitGraph, source: str = "policy", by_kind: bool = True,
                  **meta: Any) -> "SparsityPolicy":
        """This policy on another model: each of `graph`'s units takes the ratio at its relative depth.

        The ratio is interpolated among the source units of the same kind (a residual group takes the
        ratios of residual groups, a block's inner conv those of inner convs), so that units that cut a
        whole residual stream are not given the ratio of a conv inside one block; a kind the source model
        lacks is interpolated among all its units. `by_kind=False` interpolates among all units always
        (a plain depth profile, kept for comparison: `python -m bench.resampling`).
        """
        if self.mode != graph.mode:
            raise UserError(f"{source}: a policy made with prune.mode={self.mode} cannot prune with prune.mode={graph.mode}")
        if not self.profile:
            raise UserError(f"{source}: no unit profile (relative depth and kind of each unit), so it cannot be moved "
                            f"to another model; policies written by `prunepilot search` or `prune` carry one")
        missing = sorted(set(self.ratios) - set(self.profile))
        if missing:
            raise UserError(f"{source}: field `profile` lacks unit(s) {missing[:5]} that `ratios` names")
        names = sorted(self.ratios, key=lambda n: self.profile[n][0])
        depths = np.array([self.profile[n][0] for n in names])
        kinds = [self.profile[n][1] for n in names]
        ratios = np.array([self.ratios[n] for n in names])
        moved = []
        for unit, depth in zip(graph.units, depth_positions(graph)):
            same = np.array([by_kind and k == unit.kind for k in kinds])
            pick = same if same.any() else np.ones(len(names), dtype=bool)
            moved.append(float(np.interp(depth, depths[pick], ratios[pick])))
        return SparsityPolicy.from_ratios(graph, moved, **{"resampled_from": self.model_fingerprint, **meta})

    def key(self, graph: UnitGraph, round_to: int = 1) -> str:
        """Identity for caching: two policies with the same kept counts prune the model identically."""
        return stable_hash({"fp": self.model_fingerprint, "mode": self.mode, "kept": self.kept(graph, round_to)})

    # ------------------------------------------------------------------ validation
    def validate(self, graph: UnitGraph, max_ratio: float = 1.0, source: str = "policy") -> "SparsityPolicy":
        """Raise UserError naming the first problem: other mode, other model, unknown unit, bad ratio.

        The mode goes first: the fingerprint covers it, so a policy used in the other mode on its own model would
        otherwise read as made for another model."""
        if self.mode != graph.mode:
            raise UserError(f"{source}: a policy made with prune.mode={self.mode} cannot prune with prune.mode={graph.mode}")
        if self.model_fingerprint != graph.fingerprint:
            raise UserError(f"{source}: made for another model (fingerprint {self.model_fingerprint}, this model "
                            f"{graph.fingerprint}); re-express it with `prunepilot transfer` or a depth profile")
        known = set(graph.names)
        unknown = sorted(set(self.ratios) - known)
        if unknown:
            raise UserError(f"{source}: unknown unit(s) {unknown[:5]}; this model's units are {graph.names[:8]}...")
        for name, ratio in self.ratios.items():
            if name in graph.removable and ratio == 1.0:
                continue  # the whole residual block goes
            if not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0.0 <= ratio <= max_ratio:
                also = " (or 1 to remove its residual block)" if name in graph.removable else ""
                raise UserError(f"{source}: ratio of unit {name!r} must lie in [0, {max_ratio}]{also}, got {ratio!r}")
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        payload = {"format": FORMAT, "model_fingerprint": self.model_fingerprint, "mode": self.mode,
                   "ratios": self.ratios, "meta": self.meta}
        if self.profile:
            payload["profile"] = {name: {"depth": depth, "kind": kind} for name, (depth, kind) in self.profile.items()}
        return payload

    @classmethod
    def from_dict(cls, payload: Any, source: str = "policy") -> "SparsityPolicy":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise UserError(f"{source}: not a sparsity policy (expected \"format\": \"{FORMAT}\")")
        ratios = payload.get("ratios")
        if not isinstance(ratios, dict) or not all(isinstance(k, str) for k in ratios):
            raise UserError(f"{source}: field `ratios` must map unit names to numbers")
        for name, value in ratios.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{source}: ratio of unit {name!r} must be a number, got {value!r}")
        if not isinstance(payload.get("model_fingerprint"), str):
            raise UserError(f"{source}: field `model_fingerprint` must be a string")
        mode = payload.get("mode", "structured")
        if mode not in ("structured", "unstructured"):
            raise UserError(f"{source}: field `mode` must be structured or unstructured, got {mode!r}")
        return cls({k: float(v) for k, v in ratios.items()}, payload["model_fingerprint"], mode,
                   dict(payload.get("meta") or {}), _parse_profile(payload.get("profile"), source))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, allow_nan=True))

    @classmethod
    def load(cls, path: str | Path) -> "SparsityPolicy":
        path = Path(path)
        return cls.from_dict(read_json_object(path, "policy file"), source=str(path))


def _parse_profile(raw: Any, source: str) -> dict[str, tuple[float, str]]:
    if raw is None:
        return {}
    problem = f"{source}: field `profile` must map unit names to {{\"depth\": number in [0, 1], \"kind\": string}}"
    if not isinstance(raw, dict):
        raise UserError(problem)
    profile = {}
    for name, entry in raw.items():
        depth = entry.get("depth") if isinstance(entry, dict) else None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0 \
                or not isinstance(kind, str):
            raise UserError(f"{problem}; unit {name!r} has {entry!r}")
        profile[name] = (float(depth), kind)
    return profile


def unit_profile(graph: UnitGraph) -> dict[str, tuple[float, str]]:
    """Each unit's (relative depth, kind): what a policy needs to be resampled onto another model."""
    return {u.name: (float(d), u.kind) for u, d in zip(graph.units, depth_positions(graph))}


def depth_positions(graph: UnitGraph) -> np.ndarray:
    """Relative depth of each unit in [0, 1] (first unit 0, last unit 1)."""
    n = len(graph.units)
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def uniform_for_macs(graph: UnitGraph, macs_target: float, round_to: int = 1, max_ratio: float = 0.95,
                     tolerance: float = 1e-4) -> SparsityPolicy:
    """The smallest shared ratio whose policy keeps at most `macs_target` of dense MACs (bisection).

    Kept counts are rounded, so MACs fall in steps; the result meets the target whenever any
    ratio up to `max_ratio` does, else it is the `max_ratio` policy (the closest reachable).
    """
    _check_target(macs_target)
    ratio = _least(lambda r: SparsityPolicy.uniform(graph, r).macs_ratio(graph, round_to) <= macs_target,
                   0.0, max_ratio, tolerance)
    if ratio == 0.0:
        return SparsityPolicy.uniform(graph, 0.0, macs_target=macs_target)
    return SparsityPolicy.uniform(graph, ratio, macs_target=macs_target, uniform_ratio=ratio)


def fit_to_macs(policy: SparsityPolicy, graph: UnitGraph, macs_target: float, round_to: int = 1,
                max_ratio: float = 0.95, tolerance: float = 1e-4) -> SparsityPolicy:
    """`policy` shifted by the smallest common offset (ratios clipped to [0, max_ratio]) that meets `macs_target`.

    A policy resampled from another model keeps its shape (which units are pruned harder) but not its
    MACs; this moves it onto the target as the uniform rule would move a flat profile. A residual block the
    policy removes (ratio 1 on its inside, `UnitGraph.removable`) stays removed: the others move.
    """
    _check_target(macs_target)
    base = policy.vector(graph)
    removed = np.array([u.name in graph.removable for u in graph.units]) & (base >= 1.0 - 1e-9)

    def shifted(offset: float) -> SparsityPolicy:
        return SparsityPolicy.from_ratios(graph, np.where(removed, 1.0, np.clip(base + offset, 0.0, max_ratio)),
                                          **policy.meta)

    offset = _least(lambda o: shifted(o).macs_ratio(graph, round_to) <= macs_target, -max_ratio, max_ratio, tolerance)
    return shifted(offset)


def _check_target(macs_target: float) -> None:
    if not 0.0 < macs_target <= 1.0:
        raise UserError(f"prune.macs_target: must lie in (0, 1], got {macs_target}")


def _least(meets: Callable[[float], bool], low: float, high: float, tolerance: float) -> float:
    """The least x in [low, high] where the monotone predicate holds (bisection); `high` when none does."""
    if meets(low):
        return low
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high
