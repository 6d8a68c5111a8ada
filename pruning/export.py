"""Exports of a pruned model: a reloadable checkpoint, TorchScript and ONNX (checked with onnxruntime).

The checkpoint stores the architecture and each unit's kept channel count; `load_pruned`
rebuilds the dense architecture, removes channels down to those counts and loads the weights,
so it reloads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning.apply import current_kept, prune_structured
from pruning.baseline import build_from_arch
from pruning.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from pruning.errors import UserError
from pruning.inference import inference_form
from pruning.units import UnitGraph, discover_units


def save_pruned(path: Path, model: nn.Module, graph: UnitGraph, arch: dict, data_fingerprint: str,
                metrics: dict[str, float] | None = None) -> None:
    kept = current_kept(model, graph) if graph.mode == "structured" else {}
    save_checkpoint(path, model, arch=arch, data_fingerprint=data_fingerprint, kept_channels=kept, metrics=metrics)


def load_pruned(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_pruned` (or a dense one) and load its weights."""
    payload = load_checkpoint(path)
    if not payload.get("arch"):
        raise UserError(f"{path}: checkpoint has no architecture record; it is a plain state_dict")
    model = build_from_arch(payload["arch"])
    kept = payload["kept_channels"]
    if kept:
        graph = discover_units(model, tuple(payload["arch"]["input_shape"]), "structured", check_forward=False)
        unknown = sorted(set(kept) - set(graph.names))
        if unknown:
            raise UserError(f"{path}: kept_channels names units this architecture does not have: {unknown[:5]}")
        keep_first = {u.name: torch.arange(u.channels - 1, -1, -1) for u in graph.units}  # drop the last channels
        prune_structured(model, graph, kept, rankings=keep_first)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the recorded architecture ({str(exc).splitlines()[0]})") from None
    return model.eval()


def export_torchscript(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> float:
    """Trace the inference form (BN folded) to TorchScript; return max |logit difference| against
    the eager model as given, on a random batch."""
    model = model.eval().cpu()
    example = torch.randn(8, *input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(inference_form(model), example)
        atomic_write(path, lambda tmp: traced.save(str(tmp)))
        loaded = torch.jit.load(str(path))
        return float((loaded(example) - model(example)).abs().max())


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> float:
    """Export the inference form (BN folded) to ONNX with a dynamic batch axis; return max |logit
    difference| of onnxruntime against the eager model as given."""
    import onnxruntime as ort

    model = model.eval().cpu()
    example = torch.randn(16, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atomic_write(path, lambda tmp: torch.onnx.export(
            inference_form(model), (example,), str(tmp), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    got = session.run(["logits"], {"input": example.numpy()})[0]
    return float(np.abs(got - expected).max())
