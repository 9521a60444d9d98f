"""Where the project's embedded data lives.

The data folder holds the synthetic world and the committed base model. It is found,
in order: the ``FTLAB_DATA`` environment variable; ``data/`` at the root of the
checkout this package was installed from (an editable install, the course's default).
"""

from __future__ import annotations

import os
from pathlib import Path

from ftlab.errors import ArtifactError

BASE_MODEL_DIRNAME = "base_model"


def data_dir() -> Path:
    """The data folder; raises :class:`ArtifactError` saying how to point to it if absent."""
    env = os.environ.get("FTLAB_DATA")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / "data"
    if not (candidate / "world").is_dir():
        raise ArtifactError(
            f"ftlab data folder not found at {candidate}: install ftlab from a checkout with "
            "`pip install -e .` or set FTLAB_DATA to the project's data/ folder"
        )
    return candidate


def base_model_dir() -> Path:
    """Folder of the embedded base model (HF format, with tokenizer and provenance)."""
    return data_dir() / BASE_MODEL_DIRNAME


def default_config() -> Path:
    """The capstone config ``configs/capstone.yaml`` of the checkout (``ftlab run``'s default)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "capstone.yaml"
    if not path.is_file():
        raise ArtifactError(f"{path}: default config not found; give a config path: ftlab run CONFIG")
    return path
