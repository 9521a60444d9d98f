"""Provenance of the embedded base model: file hashes and the checks ``verify`` runs."""

from __future__ import annotations

import json
from pathlib import Path

from ftlab.errors import ArtifactError
from ftlab.files import sha256_file

PROVENANCE_FILE = "provenance.json"


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` except the provenance file, by name."""
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != PROVENANCE_FILE
    }


def read_provenance(model_dir: Path) -> dict:
    """The provenance record of a base-model folder."""
    path = model_dir / PROVENANCE_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; rebuild with `ftlab base-model build`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def verify_files(model_dir: Path, data: Path) -> list[str]:
    """Problems with a base-model folder, empty when it verifies.

    Checks every recorded file hash, that no file is missing, and that the corpus and
    every world file in ``data`` the model was built with (its facts, split, evaluation
    sets) are the ones it was trained and measured with. World files added later (derived
    data such as the RL prompts) do not concern the model.
    """
    prov = read_provenance(model_dir)
    problems = []
    for name, digest in prov["files"].items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: sha256 differs from provenance (file changed or corrupt)")
    corpus = data / "corpus/train.txt"
    if not corpus.is_file() or sha256_file(corpus) != prov["corpus_sha256"]:
        problems.append(f"{corpus}: not the file the model was trained on (corpus_sha256 differs)")
    for rel, digest in prov["world_files"].items():
        path = data / rel
        if path == corpus:
            continue  # said above
        if not path.is_file() or sha256_file(path) != digest:
            problems.append(f"{path}: not the world file the model was built with (sha256 "
                            "differs from its provenance)")
    return problems
