"""Checkpoints that reload safely (`weights_only=True`) and a user cache for trained baselines.

A checkpoint records the architecture (zoo name + keywords), the data fingerprint and, for a
pruned model, the kept channel count of every unit, so the model is rebuilt and then filled in:
no pickled classes, nothing executed on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pruning.errors import UserError

FORMAT_VERSION = 1


def cache_dir() -> Path:
    """$PRUNEPILOT_CACHE, else $XDG_CACHE_HOME/prunepilot, else ~/.cache/prunepilot."""
    root = os.environ.get("PRUNEPILOT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunepilot"
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only home: said before any training, not as a traceback
        raise UserError(f"{path}: cannot make the cache folder of baselines ({exc.strerror or exc}); set "
                        "PRUNEPILOT_CACHE to a folder that can be written") from None
    return path


def stable_hash(payload: Any, length: int = 16) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def weights_digest(state_dict: dict[str, torch.Tensor], length: int = 16) -> str:
    """A digest of a model's weights (names, shapes, dtypes, values): the identity of a dense model.

    The cache key of a baseline names its recipe, not its weights: the same recipe trained on another machine
    can give other weights, and runs on two dense models must not share one table.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:length]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file in the same folder, then rename: a crash or a Ctrl-C never leaves half a file
    (a bench's runs.csv is its only record of runs finished elsewhere). The temporary file is this call's own: two
    processes writing one path (claims taken over at once) shared one name, and the second's rename failed with a
    traceback once the first had renamed it away."""
    atomic_write_all({path: write})


def atomic_write_all(writes: Mapping[Path, Callable[[Path], None]]) -> None:
    """`atomic_write` for files that belong together (a table's CSV and parquet): every temporary is written before
    any is renamed, so a Ctrl-C in any write leaves them all as they were; only one in the microseconds of the
    renames themselves could leave one new beside one old."""
    temporaries = {path: path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp") for path in writes}
    try:
        for path, write in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write(temporaries[path])  # mode as any file (umask)
        for path, tmp in temporaries.items():
            tmp.replace(path)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def atomic_copy(source: Path, target: Path) -> None:
    """shutil.copyfile, whole or not at all (the run files a bench keeps are what a clone tables)."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    """`path` holds `text` whole, or what it held before."""
    def write(tmp: Path) -> None:
        with tmp.open("x") as file:
            file.write(text)

    atomic_write(path, write)


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object a user handed us (a policy, an agent's metadata, a run's state), or a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected {what} (a JSON object), got a JSON {type(payload).__name__}")
    return payload


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save, whole or not at all."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: Path, model: torch.nn.Module, *, arch: dict[str, Any], data_fingerprint: str,
                    kept_channels: dict[str, int] | None = None, metrics: dict[str, float] | None = None) -> None:
    atomic_save({
        "format": FORMAT_VERSION,
        "arch": arch,
        "data_fingerprint": data_fingerprint,
        "kept_channels": kept_channels or {},
        "metrics": metrics or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }, path)


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
"""Where training scripts and frameworks nest the weights in a checkpoint (Lightning, timm, hand-written loops)."""


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def foreign_state_dict(payload: dict) -> dict[str, torch.Tensor] | None:
    """The weights of a checkpoint another tool wrote: a plain state_dict, or one under a usual key (with the
    epoch or optimiser beside it), with DistributedDataParallel's `module.` prefix taken off. Such files were
    refused, so a user's own trained weights needed a conversion script first."""
    state_dict = payload if _is_state_dict(payload) else next(
        (payload[k] for k in STATE_DICT_KEYS if _is_state_dict(payload.get(k))), None)
    if state_dict is not None and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights only); bad files are a UserError naming the file."""
    path = Path(path)
    if path.is_dir():  # "not found" sent the user looking for a folder that is there
        raise UserError(f"{path}: is a folder; expected a checkpoint file (.pt)")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        # torch's unpickling text advises weights_only=False: never for a file a user hands us
        detail = ("damaged, or it holds objects a weights-only load refuses" if isinstance(exc, pickle.UnpicklingError)
                  else (str(exc).splitlines() or [""])[0])
        raise UserError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {detail}); "
                        "PrunePilot reloads its own checkpoints without unpickling code") from None
    if isinstance(payload, dict) and "format" not in payload:
        state_dict = foreign_state_dict(payload)
        if state_dict is not None:
            return {"format": 0, "arch": None, "data_fingerprint": None, "kept_channels": {}, "metrics": {},
                     "state_dict": state_dict}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not a PrunePilot checkpoint (format {FORMAT_VERSION}), a state_dict, nor a dict holding "
                        f"one under {', '.join(STATE_DICT_KEYS)}")
    return payload
