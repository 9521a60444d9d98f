"""File hashes and manifests: the one home of "are these the bytes that were written?".

A manifest maps file names (relative to a root folder, ``/``-separated) to
``{"sha256": hex digest, "bytes": size}``. Checkpoints (:mod:`ftlab.train.checkpoint`) and
pipeline stage outputs (:mod:`ftlab.pipeline.runner`) write one when they finish and verify
it before they are trusted again; the embedded base model's provenance records the hashes of
its files the same way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(root: Path, paths: list[Path]) -> dict[str, dict]:
    """The manifest of ``paths`` (files, or folders standing for every file inside them),
    keyed by path relative to ``root``; every path must lie under ``root``."""
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*"))
                    if f.is_file()})
    return {f.relative_to(root).as_posix(): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in files}


def manifest_problems(root: Path, manifest: object) -> list[str]:
    """Why the files under ``root`` do not match ``manifest`` (empty when every listed file
    is there with its recorded size and sha256). A manifest that is not a mapping of names to
    ``{"sha256": str, "bytes": int}`` — damaged, say by a flipped bit — is a problem too,
    never an exception."""
    if not isinstance(manifest, dict):
        return [f"the manifest is damaged (expected a mapping, got {type(manifest).__name__})"]
    problems = []
    for name, meta in manifest.items():
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                and isinstance(meta.get("bytes"), int)):
            problems.append(f"{name}: the manifest entry is damaged ({meta!r:.60})")
            continue
        file = root / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != meta["bytes"]:
            problems.append(f"{name}: {file.stat().st_size} bytes, the manifest says "
                            f"{meta['bytes']} (truncated or rewritten)")
        elif sha256_file(file) != meta["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (bytes changed after "
                            "writing)")
    return problems


def folder_listing(folder: Path) -> list[list]:
    """``[name, bytes, mtime_ns]`` of every file under ``folder`` (names relative, sorted):
    what tells, without reading them, that a folder's files were rewritten."""
    return [[f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(folder.rglob("*")) if f.is_file()]


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a ``.partial`` file renamed into place, so a reader
    finds either the old file or the whole new one, never a half-written one."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
