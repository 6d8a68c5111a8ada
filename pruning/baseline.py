"""The dense baseline: trained once per (architecture, data, recipe, seed) and cached for every later run."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pruning.checkpoint import cache_dir, load_checkpoint, save_checkpoint, stable_hash, weights_digest
from pruning.config import RunConfig
from pruning.data import DataBundle
from pruning.errors import UserError
from pruning.inference import runs_channels_last
from pruning.models import build_model
from pruning.training import Recipe, evaluate_accuracy, train

log = logging.getLogger(__name__)


@dataclass
class Baseline:
    model: nn.Module
    arch: dict
    checkpoint: Path
    val_accuracy: float
    test_accuracy: float
    trained_now: bool

    @property
    def digest(self) -> str:
        """The identity of these dense weights (`weights_digest`)."""
        return weights_digest(self.model.state_dict())

    def identity(self) -> dict:
        """What a run records of the dense model it pruned, so runs on different ones are never tabled together."""
        return {"digest": self.digest, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "checkpoint": str(self.checkpoint)}


def train_recipe(cfg: RunConfig) -> Recipe:
    t = cfg.train
    return Recipe(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                  weight_decay=t.weight_decay, schedule=t.schedule, label_smoothing=t.label_smoothing, augment=t.augment)


def architecture(cfg: RunConfig, data: DataBundle) -> dict:
    return {"name": cfg.model.name, "kwargs": dict(cfg.model.kwargs), "in_channels": data.input_shape[0],
            "num_classes": data.num_classes, "input_shape": list(data.input_shape)}


def build_from_arch(arch: dict) -> nn.Module:
    return build_model(arch["name"], arch["in_channels"], arch["num_classes"], tuple(arch["input_shape"]), **arch["kwargs"])


def model_structure(model: nn.Module) -> str:
    """A digest of what the model computes: its layers as printed (types, sizes, strides, activations) and the
    source of every module class that is not torch's own (their forward). The cache key named only the model's
    name, so an edited user model loaded the weights of the old one: silently where the shapes still fitted."""
    sources = []
    for kind in sorted({type(m) for m in model.modules() if not type(m).__module__.startswith("torch.")},
                       key=lambda t: f"{t.__module__}.{t.__qualname__}"):
        try:
            sources.append(inspect.getsource(kind))
        except (OSError, TypeError):  # defined where no source is kept (an interactive session)
            sources.append(f"{kind.__module__}.{kind.__qualname__}")
    return stable_hash({"layers": repr(model), "sources": sources})


def baseline_path(cfg: RunConfig, data: DataBundle, model: nn.Module | None = None) -> Path:
    """The cache file of the dense baseline `cfg` trains: its architecture, structure, data, recipe and seed."""
    arch = architecture(cfg, data)
    structure = model_structure(model if model is not None else build_from_arch(arch))
    key = stable_hash({"arch": arch, "structure": structure, "data": data.fingerprint,
                       "recipe": train_recipe(cfg).__dict__, "seed": cfg.seed})
    return cache_dir() / "baselines" / f"{cfg.model.name.replace(':', '_')}-{key}.pt"


def known_digest(cfg: RunConfig, data: DataBundle) -> str | None:
    """The digest of the dense model a run of `cfg` would use, if it exists yet (None: it would be trained)."""
    path = Path(cfg.model.checkpoint) if cfg.model.checkpoint else baseline_path(cfg, data)
    if not cfg.model.checkpoint and not path.is_file():
        return None
    return weights_digest(load_checkpoint(path)["state_dict"])


def get_baseline(cfg: RunConfig, data: DataBundle, device: torch.device, generator: torch.Generator,
                 retrain: bool = False, show_progress: bool = True) -> Baseline:
    """Load the user's checkpoint, or the cached baseline, or train it now and cache it."""
    arch = architecture(cfg, data)
    model = build_from_arch(arch).to(device)
    if cfg.model.checkpoint:
        path = Path(cfg.model.checkpoint)
        payload = load_checkpoint(path)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise UserError(f"model.checkpoint: {path} does not fit model {cfg.model.name!r} ({str(exc).splitlines()[0]})") from None
        trained_now = False
    else:
        path = baseline_path(cfg, data, model)
        trained_now = retrain or not path.is_file()
        if trained_now:
            log.info("training the dense baseline %s (%s epochs); cached at %s", cfg.model.name, cfg.train.epochs, path)
            if device.type == "cpu" and runs_channels_last(model, data.input_shape):
                model = model.to(memory_format=torch.channels_last)
            train(model, data, train_recipe(cfg), generator, description=f"train {cfg.model.name}", show_progress=show_progress)
            model = model.to(memory_format=torch.contiguous_format)
        else:
            try:
                model.load_state_dict(load_checkpoint(path)["state_dict"])
            except RuntimeError as exc:  # a file written by hand or another version into the cache
                raise UserError(f"{path}: the cached baseline does not fit model {cfg.model.name!r} "
                                f"({str(exc).splitlines()[0]}); delete it to train the baseline again") from None
    model.eval()
    val_acc = evaluate_accuracy(model, data.x_val, data.y_val)
    test_acc = evaluate_accuracy(model, data.x_test, data.y_test)
    if trained_now:
        save_checkpoint(path, model, arch=arch, data_fingerprint=data.fingerprint,
                        metrics={"val_accuracy": val_acc, "test_accuracy": test_acc})
    return Baseline(model, arch, path, val_acc, test_acc, trained_now)
