"""Where the project's embedded data lives, and how paths are shown.

The data folder holds the synthetic world and the committed base model. It is found,
in order: the ``FTLAB_DATA`` environment variable; ``data/`` at the root of the
checkout this package was installed from (an editable install, the course's default).

Printed paths (data reports, the plan, ``report.md``) go through :func:`shown`, so
output a notebook commits or a run folder keeps never names one machine's folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftlab.errors import ArtifactError

BASE_MODEL_DIRNAME = "base_model"


def project_dir() -> Path:
    """The checkout this package was installed from (editable install): it holds ``data/``,
    ``configs/``, ``notebooks/`` and the gitignored ``runs/``."""
    return Path(__file__).resolve().parents[2]


def shown(path: str | Path, within: str | Path | None = None) -> str:
    """``path`` as output shows it. A relative path (as a user typed it, or a Hub id such
    as ``Qwen/Qwen2.5-0.5B``) is returned as given. An absolute one is shown relative to
    ``within`` (say a run folder) when it lies inside it, else relative to the project
    checkout (``data/sft/messages.jsonl``) when it lies inside that, else unchanged.
    Paths are compared resolved (symlinks, ``..``)."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError):  # a symlink loop: show it as given
        return text
    for base in ([Path(within)] if within is not None else []) + [project_dir()]:
        try:
            relative = resolved.relative_to(Path(base).resolve())
        except ValueError:
            continue
        return relative.as_posix() if relative.parts else "."
    return text


def scratch_dir(name: str) -> Path:
    """An empty folder ``runs/<name>`` of the project (``runs/`` is gitignored) for what a
    notebook writes: emptied first, so each Run All starts afresh, and printed as
    ``runs/<name>/...`` rather than one machine's temporary folder."""
    import shutil

    folder = project_dir() / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def data_dir() -> Path:
    """The data folder; raises :class:`ArtifactError` saying how to point to it if absent."""
    env = os.environ.get("FTLAB_DATA")
    candidate = Path(env) if env else project_dir() / "data"
    if not (candidate / "world").is_dir():
        raise ArtifactError(
            f"ftlab data folder not found at {candidate}: install ftlab from a checkout with "
            "`pip install -e .` or set FTLAB_DATA to the project's data/ folder"
        )
    return candidate


def base_model_dir() -> Path:
    """Folder of the embedded base model (HF format, with tokenizer and provenance)."""
    return data_dir() / BASE_MODEL_DIRNAME


def student_model_dir() -> Path:
    """Folder of the embedded student model (the distillation track's smaller model, with the
    base model's tokenizer; HF format with provenance)."""
    return data_dir() / "student_model"


def default_config() -> Path:
    """The capstone config ``configs/capstone.yaml`` of the checkout (``ftlab run``'s default)."""
    path = project_dir() / "configs" / "capstone.yaml"
    if not path.is_file():
        raise ArtifactError(f"{path}: default config not found; give a config path: ftlab run CONFIG")
    return path
