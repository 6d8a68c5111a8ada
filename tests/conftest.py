"""Shared fixtures: small real data (synthetic blobs, scikit-learn digits) and small models, so tests run in seconds."""

from __future__ import annotations

import pytest
import torch

from pruning.data import load_data
from pruning.models import build_model
from pruning.training import Recipe, train


torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to oversubscription on 2 cores


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PRUNEPILOT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def synthetic():
    return load_data("synthetic", size=12, n_train=600, n_test=200)


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def trained_vgg(digits):
    """A small VGG trained for a few epochs on digits (about 2 s): accuracy well above chance."""
    torch.manual_seed(0)
    model = build_model("vgg_small", 1, 10, digits.input_shape, widths=(8, 8, "M", 16, 16, "M", 32))
    train(model, digits, Recipe(epochs=6, batch_size=64, lr=0.05, augment=False), torch.Generator().manual_seed(0),
          show_progress=False)
    return model.eval()
