"""Shared fixtures. Everything runs offline: the hub is never contacted."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from ftlab.paths import base_model_dir, data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data():
    """The committed data folder."""
    return data_dir()


@pytest.fixture(scope="session")
def base_model():
    """(model, tokenizer) of the committed embedded base model, loaded once."""
    from ftlab.models import load_base_model

    return load_base_model(base_model_dir())


@pytest.fixture(scope="session")
def tokenizer(base_model):
    return base_model[1]


@pytest.fixture(scope="session")
def perturbed():
    """``make(model, seed=0, scale=0.01)``: a copy of ``model`` with every weight nudged by
    seeded Gaussian noise of std ``scale`` — a policy that differs from its reference."""
    def make(model, seed=0, scale=0.01):
        policy = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
        return policy
    return make


@pytest.fixture(scope="session")
def fresh_world(tmp_path_factory):
    """A world built from scratch into a temporary folder (seed 0)."""
    from ftlab.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out)
    return out


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are collected everywhere and skipped, with the reason, without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none "
                                   "(run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
