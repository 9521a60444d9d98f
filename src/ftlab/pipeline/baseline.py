"""The starting model's figures (the report's ``base`` row), measured once per machine.

``ftlab run`` measures the model its first stage starts from before training anything: the
same held-out answers, perplexity, cloze and preference figures every stage is measured by.
For a given model, evaluation settings and data those figures never change, yet every new
run folder used to measure them again (~4 s for the embedded model with short answers, many
minutes for a real one). They are kept in a cache folder, one JSON file per key:

- the model: ``model`` section, and the sha256 of every file of its folder (the embedded
  model's ``data/base_model``, a local folder, or a Hub id's cached snapshot; a model whose
  files cannot be found is not cached);
- the ``eval`` section and the contents of every file the measurement reads
  (:data:`ftlab.pipeline.measure.MEASURED_DATA`; a preference file of its own by its contents);
- the ftlab code (every ``.py`` file of the package: a changed metric never reads an old
  figure) and the numerics (torch and transformers versions, CPU kernels, torch threads).

The folder is ``$FTLAB_CACHE/baselines`` if set (``off`` turns the cache off), else
``$XDG_CACHE_HOME/ftlab/baselines``, else ``~/.cache/ftlab/baselines``. A file that cannot be read or has not the
expected shape is measured again and replaced; a folder that cannot be written costs the
cache, never the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

import ftlab
from ftlab.config import EvalConfig, ModelConfig
from ftlab.files import file_manifest, sha256_file
from ftlab.paths import base_model_dir, data_dir
from ftlab.pipeline.context import EMBEDDED
from ftlab.pipeline.measure import MEASURED_DATA

CACHE_ENV = "FTLAB_CACHE"


def cache_dir() -> Path | None:
    """Where baselines are kept (see the module docstring); None when ``FTLAB_CACHE=off``
    or when there is no home folder to put it in."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser() / "baselines"
    try:
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no HOME and no passwd entry (some containers): no cache
        return None
    return Path(root) / "ftlab" / "baselines"


def model_folder(name_or_path: str) -> Path | None:
    """The folder holding the model's files: ``embedded`` -> ``data/base_model``, a local
    folder -> itself, a Hub id -> its cached snapshot; None where there is none."""
    if name_or_path == EMBEDDED:
        return base_model_dir()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(name_or_path, "config.json")
    except HFValidationError:  # not a Hub id either: nothing to key on
        return None
    return Path(found).parent if isinstance(found, str) else None


def _code_digest() -> str:
    package = Path(ftlab.__file__).parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def baseline_key(model: ModelConfig, evaluation: EvalConfig) -> str | None:
    """The cache key of measuring ``model`` under ``evaluation`` here (sha256 hex), or None
    when the model's files cannot be found (nothing to key on: it is measured every time)."""
    folder = model_folder(model.name_or_path)
    if folder is None:
        return None
    data = data_dir()
    settings = evaluation.model_dump(mode="json", exclude={"preference_path"})
    material = {
        "model": model.model_dump(mode="json"), "weights": file_manifest(folder, [folder]),
        "eval": settings,  # the preference file by its contents, wherever it lies
        "preferences": (sha256_file(evaluation.preference_path)
                        if evaluation.preference_path else None),
        "data": {name: sha256_file(data / name) if (data / name).is_file() else None
                 for name in MEASURED_DATA},
        "code": _code_digest(),
        "numerics": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cpu": torch.backends.cpu.get_cpu_capability(),
                     "threads": torch.get_num_threads()},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def read_cached(folder: Path, key: str) -> dict | None:
    """The cached ``{"metrics", "samples", "measured"}`` under ``key`` in ``folder``, or
    None (absent, unreadable, or not of that shape)."""
    try:
        entry = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(entry, dict) and isinstance(entry.get("metrics"), dict)
          and all(isinstance(v, (int, float)) for v in entry["metrics"].values())
          and isinstance(entry.get("samples"), list) and isinstance(entry.get("measured"), str))
    return entry if ok else None


def write_cached(folder: Path, key: str, metrics: dict, samples: list) -> None:
    """Keep ``metrics`` and ``samples`` under ``key`` in ``folder``: written whole (a
    temporary file renamed into place) or not at all; a folder that cannot be written, or
    figures that cannot be written as JSON, cost the cache, never the run."""
    entry = {"metrics": metrics, "samples": samples,
             "measured": time.strftime("%Y-%m-%d %H:%M", time.localtime())}
    written = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False,
                                         encoding="utf-8") as tmp:
            written = tmp.name
            json.dump(entry, tmp)
        os.replace(written, folder / f"{key}.json")
        written = None
    except (OSError, TypeError, ValueError):
        pass
    finally:
        if written is not None:
            with contextlib.suppress(OSError):
                os.unlink(written)


def measure_baseline(model: ModelConfig, evaluation: EvalConfig,
                     measure: Callable[[], tuple[dict, list]],
                     print_fn: Callable[[str], None] = print) -> tuple[dict, list]:
    """``(metrics, samples)`` of the starting model: from the cache when this model,
    ``evaluation``, data, code and numerics were measured before, else ``measure()``'s,
    kept for next time. Says which it did (no path or date: run output stays the same
    whoever runs it)."""
    folder = cache_dir()
    try:
        key = baseline_key(model, evaluation) if folder is not None else None
    except OSError:  # a model or data file that cannot be read: measure without the cache
        key = None
    entry = read_cached(folder, key) if key else None
    if entry is not None:
        print_fn("base model figures: from the cache (this model, eval section, data and code "
                 f"were measured before; {CACHE_ENV}=off measures again)")
        return entry["metrics"], entry["samples"]
    print_fn("measuring the base model ...")
    metrics, samples = measure()
    if key:
        write_cached(folder, key, metrics, samples)
    return metrics, samples
