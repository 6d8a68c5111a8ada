"""A bench folder continues only with the settings its finished runs were made with (run folders or runs.csv rows).

`prunepilot bench` skips every run whose outputs exist, so a second call with other settings into
the same folder would otherwise table old runs as if they had the new ones. Settings that only pick
which runs make up the grid (methods, seeds, targets, the transfer's extra warm starts and from-scratch
searches, how many at once) may change; a setting new since the folder was written counts as unchanged (it
has its default, the old behaviour).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruning.errors import UserError

GRID_SELECTION = {"name", "bench.methods", "bench.seeds", "bench.macs_targets", "bench.parallel", "bench.transfer_warm_seeds",
                  "bench.transfer_scratch_seeds"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: config paths as a user writes them in overrides."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def changed_settings(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted path: (recorded, current)} for settings in both that differ, outside the grid selection."""
    old, new = flatten(recorded), flatten(json.loads(json.dumps(current, default=str)))
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if k not in GRID_SELECTION and old[k] != new[k]}


def is_kept_source(folder: Path, source: Any) -> bool:
    """`source` is the folder's own reuse/source, the copy the transfer part keeps of whichever source it used: on a
    clone (no run folders) it stands for that same agent, so a change between it and the source it copies (null: the
    folder's own run, or the path the copy was made from) is no change of setting."""
    return isinstance(source, str) and Path(source).resolve() == (folder / "reuse" / "source").resolve()


def check_same_settings(folder: Path, current: dict[str, Any]) -> None:
    """Raise a UserError naming each changed setting when `folder` holds runs made with others."""
    recorded_file = folder / "config.json"
    started = any(p.is_dir() for part in ("runs", "transfer") for p in (folder / part).glob("*")) \
        or (folder / "runs.csv").is_file()  # runs finished elsewhere, tabled from it
    if not recorded_file.is_file() or not started:
        return
    changed = changed_settings(json.loads(recorded_file.read_text()), current)
    if "bench.transfer_source" in changed and any(is_kept_source(folder, v) for v in changed["bench.transfer_source"]):
        del changed["bench.transfer_source"]
    if changed:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise UserError(f"{folder}: its runs were made with other settings ({listed}{more}); continuing would table "
                        f"them as if made with these. Give a new --out folder, or the settings in {recorded_file}")
