"""Datasets as in-memory tensors with deterministic train / validation / test splits.

Everything downstream (training, the shared evaluation function, the RL environment) reads
from a `DataBundle` held in memory once, so no evaluation ever copies or reloads data.
Validation is always carved from the end of the training set; rewards use it, never the test split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pruning.errors import UserError

FASHION_MNIST_ENV = "PRUNEPILOT_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian), or set "
    f"{FASHION_MNIST_ENV} / data.path to a directory holding the four MNIST-format IDX files"
)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class DataBundle:
    """Normalised image tensors (N, C, H, W) and int64 labels for the three splits."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    fingerprint: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "DataBundle":
        """Move every split to `device` once (for CUDA runs); a no-op when already there."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return DataBundle(self.name, **moved, num_classes=self.num_classes, fingerprint=self.fingerprint)

    def summary(self) -> str:
        return (f"{self.name}: train {len(self.y_train)}, val {len(self.y_val)}, test {len(self.y_test)}, "
                f"input {tuple(self.input_shape)}, {self.num_classes} classes")


# ----------------------------------------------------------------------------------------- IDX
def _open_idx(directory: Path, stem: str):
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise UserError(f"data.path: {directory} has no {stem}[.gz]; {INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a uint8 array; corrupt files are a UserError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc}); {INSTALL_HINT}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic number); {INSTALL_HINT}")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file: header says {dims}, found {body.size} bytes; {INSTALL_HINT}")
    return body.reshape(dims)


def load_idx_directory(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"data.path: directory {directory} does not exist; {INSTALL_HINT}")
    arrays = {key: read_idx(_open_idx(directory, stem)) for key, stem in IDX_FILES.items()}
    if len(arrays["train_images"]) != len(arrays["train_labels"]):
        raise UserError(f"{directory}: train images and labels differ in count")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


# ----------------------------------------------------------------------------------- sources
def _fashion_mnist(path: str | None):
    directory = path or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT
    return load_idx_directory(directory)


def _mnist_idx(path: str | None):
    if not path:
        raise UserError("data.path: dataset 'mnist-idx' needs data.path, a directory of MNIST-format IDX files")
    return load_idx_directory(path)


def _digits(path: str | None):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))  # fixed: the split never depends on the run seed
    images, labels = images[order], digits.target[order].astype(np.int64)
    n_test = len(images) // 5
    return images[:-n_test], labels[:-n_test], images[-n_test:], labels[-n_test:]


def _synthetic(path: str | None, *, size: int = 12, n_train: int = 1200, n_test: int = 300,
               num_classes: int = 4):
    """Class-dependent blobs plus noise: learnable in a few epochs, for fast tests."""
    rng = np.random.default_rng(1234)
    prototypes = rng.random((num_classes, size, size)) > 0.6

    def draw(n: int):
        labels = rng.integers(0, num_classes, n)
        images = prototypes[labels] * 180 + rng.normal(0, 40, (n, size, size))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def _user_function(spec: str) -> Callable[..., tuple]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"data.name: {spec!r} is neither a known dataset nor 'module:function'")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"data.name: cannot import {spec!r} ({exc})") from None


SOURCES: dict[str, Callable[..., tuple]] = {
    "fashion-mnist": _fashion_mnist,
    "mnist-idx": _mnist_idx,
    "digits": _digits,
    "synthetic": _synthetic,
}


# ------------------------------------------------------------------------------------ bundle
def _as_images(array: np.ndarray | torch.Tensor, field: str) -> torch.Tensor:
    array = np.array(array)  # a copy: IDX arrays are read-only views of the file's bytes
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise UserError(f"{field}: expected real numbers, got values of type {array.dtype}")
    tensor = torch.as_tensor(array)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.ndim != 4:
        raise UserError(f"{field}: expected images shaped (N, H, W) or (N, C, H, W), got {tuple(tensor.shape)}")
    tensor = tensor.float()
    if len(tensor) == 0:
        raise UserError(f"{field}: expected at least one image, got none")
    if not torch.isfinite(tensor).all():  # one NaN made the normalising mean NaN, and then every image
        raise UserError(f"{field}: {int((~torch.isfinite(tensor)).sum())} value(s) are NaN or infinite")
    return tensor


def _as_labels(array: np.ndarray | torch.Tensor, field: str, count: int) -> torch.Tensor:
    """Class indices 0..K-1, one per image: strings, fractions or negatives failed deep in training, if at all."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:  # (N, 1), as Keras-style loaders give them
        array = array[:, 0]
    if array.ndim != 1:
        raise UserError(f"{field}: expected one class index per image, shaped (N,), got {array.shape}")
    if len(array) != count:  # extra images or labels were dropped without a word, shifting the splits
        raise UserError(f"{field}: {len(array)} labels for {count} images; expected one label per image")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)) \
            or np.iscomplexobj(array):
        raise UserError(f"{field}: expected integer class indices 0..K-1, got values of type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise UserError(f"{field}: expected integer class indices 0..K-1, got fractional or non-finite values")
    if array.min() < 0:
        raise UserError(f"{field}: expected class indices 0..K-1, got {array.min():g}")
    return torch.as_tensor(array.astype(np.int64))


def check_source_options(name: str, options: dict) -> None:
    """A built-in dataset's options are its loader's keywords; one it does not take (a typo, `n_trian`) was ignored."""
    accepted = [n for n, parameter in inspect.signature(SOURCES[name]).parameters.items()
                if n != "path" and parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"data.options: dataset {name!r} takes no option(s) {unknown}; "
                        + (f"it takes {accepted}" if accepted else "it takes none"))


def load_data(name: str, path: str | None = None, val_fraction: float = 0.1,
              val_size: int | None = None, **options: object) -> DataBundle:
    """Load dataset `name` (a key of SOURCES or 'module:function') with its deterministic splits.

    Fashion-MNIST keeps the protocol's 55k / 5k / 10k: the validation split is the last
    `val_size` (default 5000) training images. Other sets hold out the last `val_fraction`.
    """
    if name in SOURCES:
        check_source_options(name, options)
        x_train, y_train, x_test, y_test = SOURCES[name](path, **options)
    else:  # a user's 'module:function' gets its options as keywords (and path= when data.path is set)
        produced = _user_function(name)(**({"path": path} if path else {}), **options)
        if not isinstance(produced, (tuple, list)) or len(produced) != 4:
            raise UserError(f"data.name: {name} must return (x_train, y_train, x_test, y_test)")
        x_train, y_train, x_test, y_test = produced
    x_train, x_test = _as_images(x_train, f"{name}: train images"), _as_images(x_test, f"{name}: test images")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{name}: train images are shaped {tuple(x_train.shape[1:])} and test images "
                        f"{tuple(x_test.shape[1:])}; expected one (C, H, W) for both")
    y_train = _as_labels(y_train, f"{name}: train labels", len(x_train))
    y_test = _as_labels(y_test, f"{name}: test labels", len(x_test))
    if val_size is None:
        val_size = 5000 if name == "fashion-mnist" else max(1, int(round(len(y_train) * val_fraction)))
    if not 0 < val_size < len(y_train):
        raise UserError(f"data.val_size: must lie in (0, {len(y_train)}), got {val_size}")
    fingerprint = hashlib.sha1()
    for tensor in (x_train, y_train, x_test, y_test):
        fingerprint.update(tensor.numpy().tobytes())
    fingerprint.update(str(val_size).encode())
    mean, std = x_train[:-val_size].mean(), x_train[:-val_size].std().clamp_min(1e-6)
    normalise = lambda x: ((x - mean) / std).contiguous()  # noqa: E731
    return DataBundle(
        name=name,
        x_train=normalise(x_train[:-val_size]), y_train=y_train[:-val_size],
        x_val=normalise(x_train[-val_size:]), y_val=y_train[-val_size:],
        x_test=normalise(x_test), y_test=y_test,
        num_classes=int(max(y_train.max(), y_test.max()).item()) + 1,
        fingerprint=fingerprint.hexdigest()[:16],
    )


# ----------------------------------------------------------------------------------- batches
def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding, plus a horizontal flip of half the images with `flip`, vectorised over the
    batch."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, limit: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches as views or index selections of in-memory tensors (no copies of the set)."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for count, start in enumerate(range(0, n, batch_size)):
        if limit is not None and count >= limit:
            return
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size].to(x.device)
            yield x[idx], y[idx]
