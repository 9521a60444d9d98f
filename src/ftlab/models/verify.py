"""``ftlab base-model verify``: is the committed base model the one its provenance describes?"""

from __future__ import annotations

from collections.abc import Callable

from ftlab.models.load import TOKENIZER_FILES
from ftlab.models.provenance import read_provenance, verify_files
from ftlab.paths import base_model_dir, data_dir, student_model_dir

LOSS_TOLERANCE = 0.01
"""Largest relative difference between measured and recorded validation loss."""


def verify_base_model(measure: bool = False, print_fn: Callable[[str], None] = print,
                      preset: str = "base") -> list[str]:
    """Problems found (empty when it verifies).

    Always: every file hash, the corpus and world manifest it was trained on; for the
    ``student`` preset also that its tokenizer is the base model's, byte for byte. With
    ``measure``: reload the model and recompute validation loss, which must be within
    :data:`LOSS_TOLERANCE` (relative) of the recorded value.
    """
    data = data_dir()
    folder = base_model_dir() if preset == "base" else student_model_dir()
    problems = verify_files(folder, data)
    if preset == "student" and not problems:
        base = base_model_dir()
        problems += [f"{folder / name}: not the base model's (the student's logits must index "
                     "the same vocabulary)" for name in TOKENIZER_FILES
                     if not (base / name).is_file()
                     or (folder / name).read_bytes() != (base / name).read_bytes()]
    for p in problems:
        print_fn(p)
    if measure and not problems:
        from ftlab.models.build import measure_validation_loss
        from ftlab.models.load import load_base_model

        prov = read_provenance(folder)
        model, tok = load_base_model(folder)
        loss = measure_validation_loss(model, tok, data, prov["recipe"]["seq_len"])
        rel = abs(loss - prov["validation_loss"]) / prov["validation_loss"]
        print_fn(f"validation loss {loss:.4f} (recorded {prov['validation_loss']:.4f}, "
                 f"relative difference {rel:.2e})")
        if rel > LOSS_TOLERANCE:
            problems.append(f"validation loss {loss:.4f} differs from recorded "
                            f"{prov['validation_loss']:.4f} by more than {LOSS_TOLERANCE:.0%}")
    return problems
