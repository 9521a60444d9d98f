"""M4.4 — checkpoints: everything a run needs to continue as if never stopped.

A checkpoint is a folder ``<run>/checkpoints/step-<NNNNNN>/`` holding

* ``trainable.safetensors`` — the trainable parameters (name -> tensor) and nothing frozen;
* ``state.pt`` — optimizer and scheduler ``state_dict``s, RNG states (torch, CUDA, Python,
  NumPy), the data position (:class:`~ftlab.train.batching.BatchLoader` state) and the
  trainer's counters; loadable with ``torch.load(..., weights_only=True)``;
* ``config.json`` — the run's training settings;
* ``manifest.json`` — the sha256 and size of every other file, written last.

Writing is atomic: files go to a hidden temporary folder, are flushed to disk, and the folder
is renamed into place, so a crash (even SIGKILL) leaves either a complete checkpoint or a
temporary folder that resuming ignores. A checkpoint whose files do not match its manifest
(truncated, modified, missing) is moved to ``checkpoints/corrupt/`` with a warning naming the
file, and the previous good one is used.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ftlab.errors import ArtifactError
from ftlab.files import file_manifest, manifest_problems
from ftlab.paths import shown

WEIGHTS, STATE, CONFIG, MANIFEST = ("trainable.safetensors", "state.pt", "config.json",
                                    "manifest.json")
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointWarning(UserWarning):
    """A checkpoint was damaged and skipped."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, trainable weights and state (see module doc)."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["trainer"]["step"])


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict:
    """Every RNG a training step may draw from (dropout draws from torch's)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that train (``requires_grad``), by name. Parameters
    sharded by FSDP2 (DTensors) are gathered whole: then every process must call it."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
            .contiguous().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def restore_training_state(checkpoint: Checkpoint, model: nn.Module,
                           optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler, loader) -> dict:
    """Put a run back exactly where ``checkpoint`` was taken; return the trainer counters.

    Restore, from ``checkpoint.weights``, every trainable parameter of ``model`` in place
    (``copy_`` under ``torch.no_grad()``, so the optimizer keeps pointing at the same
    tensors); from ``checkpoint.state``: the optimizer (``"optimizer"``), the scheduler
    (``"scheduler"``), the data position (``"data"``, via ``loader.load_state_dict``) and the
    RNG states (``"rng"``, via :func:`set_rng_state` — dropout masks depend on them). Return
    ``checkpoint.state["trainer"]``. Anything left out makes the resumed run diverge from an
    uninterrupted one.

    Every RNG is restored: torch's (and CUDA's), Python's ``random`` and NumPy's — torch's
    alone is not enough. The model's parameters stay the same tensor objects (the optimizer
    holds them; new ``nn.Parameter`` objects would leave it stepping the old ones). Returns
    the trainer counters dict only, not the whole state.
    """
    ### BEGIN SOLUTION M4.4
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in checkpoint.weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(checkpoint.state["optimizer"])
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    loader.load_state_dict(checkpoint.state["data"])
    set_rng_state(checkpoint.state["rng"])
    return checkpoint.state["trainer"]
    ### END SOLUTION


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write) -> None:
    """Call ``write(path)`` and flush the file to disk. A write that fails (disk full, a
    file-size limit: torch reports these as ``RuntimeError``, safetensors as its own error)
    raises :class:`ArtifactError` naming the file and the cause."""
    try:
        write(path)
        _fsync(path)
    except Exception as error:  # noqa: BLE001 - every library words a failed write its own way
        raise ArtifactError(f"cannot write {path}: {type(error).__name__}: "
                            f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
                            "; free space (or raise the limit) and run again: the checkpoints "
                            "already written are kept") from error


def save_checkpoint(root: Path, weights: dict[str, torch.Tensor], state: dict,
                    config: dict) -> Path:
    """Write a checkpoint for ``state["trainer"]["step"]`` under ``root`` atomically.

    Returns the final folder. Raises :class:`ArtifactError` when it already exists.
    """
    step = int(state["trainer"]["step"])
    final = root / step_dir_name(step)
    if final.exists():
        raise ArtifactError(f"{final}: a checkpoint for step {step} already exists")
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_file(tmp / WEIGHTS, lambda p: save_file(weights, str(p)))
        write_file(tmp / STATE, lambda p: torch.save(state, p))
        write_file(tmp / CONFIG, lambda p: p.write_text(json.dumps(config, indent=1, default=str)))
        manifest = {"step": step,
                    "files": file_manifest(tmp, [tmp / n for n in (WEIGHTS, STATE, CONFIG)])}
        write_file(tmp / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
    except ArtifactError:
        shutil.rmtree(tmp, ignore_errors=True)  # never left half-written
        raise
    os.rename(tmp, final)
    _fsync(root)
    return final


def checkpoint_problems(path: Path) -> list[str]:
    """Why the checkpoint folder ``path`` cannot be trusted (empty when it verifies). A
    missing, unreadable or damaged ``manifest.json`` makes it untrusted, like a damaged file."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return [f"{MANIFEST}: missing or unreadable ({e.__class__.__name__})"]
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return [f"{MANIFEST}: damaged (no 'files' mapping)"]
    problems = [f"{name}: not listed in the manifest" for name in (WEIGHTS, STATE, CONFIG)
                if name not in files]
    return problems + manifest_problems(path, files)


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, oldest step first (temporary folders excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a verified checkpoint folder (weights on CPU)."""
    return Checkpoint(path, load_file(str(path / WEIGHTS)),
                      torch.load(path / STATE, weights_only=True))


def latest_good_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that verifies, or None.

    Leftover temporary folders (a crash while writing) are deleted. Each newer checkpoint
    that fails :func:`checkpoint_problems` is moved to ``root/corrupt/`` and reported with a
    :class:`CheckpointWarning` naming the damaged file and the checkpoint used instead.
    """
    if not root.is_dir():
        return None
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    found = list_checkpoints(root)
    for i, path in enumerate(reversed(found)):
        problems = checkpoint_problems(path)
        if not problems:
            return load_checkpoint(path)
        aside = root / "corrupt" / path.name
        n = 1
        while aside.exists():
            aside, n = root / "corrupt" / f"{path.name}.{n}", n + 1
        aside.parent.mkdir(exist_ok=True)
        os.rename(path, aside)
        older = found[len(found) - 2 - i] if i < len(found) - 1 else None
        fallback = (f"trying the previous one, {older.name}" if older
                    else "no older checkpoint: the run starts from step 0")
        warnings.warn(f"checkpoint {path.name} is damaged — {'; '.join(problems)}. Moved to "
                      f"{shown(aside)}; {fallback}.", CheckpointWarning, stacklevel=2)
    return None


def prune_checkpoints(root: Path, keep_last: int, keep_steps: set[int]) -> None:
    """Delete checkpoints other than the newest ``keep_last`` and those of ``keep_steps``
    (the best one)."""
    found = list_checkpoints(root)
    for path in found[:-keep_last]:
        if int(_STEP_DIR.match(path.name).group(1)) not in keep_steps:
            shutil.rmtree(path)
