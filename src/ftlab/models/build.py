"""Build the embedded base model from the world's corpus: ``ftlab base-model build``
(``--preset student``: the distillation track's smaller model, with the base model's tokenizer).

Steps: train the tokenizer on ``corpus/train.txt`` (or take a built model's); pack documents into blocks; pretrain
a seeded tiny Llama; measure it (validation perplexity, cloze accuracy on held-out facts,
chat-form exact match before any SFT); write the HF folder and ``provenance.json``
atomically (a temporary folder renamed into place).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, LlamaForCausalLM

from ftlab.models.architecture import ArchitectureConfig, llama_config
from ftlab.models.measure import (
    chat_exact_match, cloze_correct, corpus_loss, pack_documents, perplexity, rates_by_kind,
)
from ftlab.models.load import TOKENIZER_FILES, load_tokenizer
from ftlab.models.pretrain import PretrainRecipe, pretrain
from ftlab.errors import ArtifactError
from ftlab.files import sha256_file
from ftlab.models.provenance import PROVENANCE_FILE, file_hashes
from ftlab.models.tokenizer import DOC_SEP, IM_END, train_tokenizer
from ftlab.world import Fact, all_facts

LOSS_CURVE_EVERY = 10
"""Steps between the points of the training-loss curve kept in provenance."""


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def question_items(data: Path, name: str) -> list[tuple[Fact, str]]:
    """(fact, question) pairs of the chat question set ``data/eval/<name>.jsonl``
    (``heldout_chat``, ``seen_chat``)."""
    facts = {f.id: f for f in all_facts()}
    return [(facts[r["id"]], r["question"]) for r in read_jsonl(data / f"eval/{name}.jsonl")]


def eval_items(data: Path) -> dict[str, list[tuple[Fact, str]]]:
    """The base model's probe sets as (fact, prompt or question) pairs.

    ``cloze_heldout``: plain prompts of facts held out of SFT; ``chat_heldout``: chat
    questions on the same facts (``eval/heldout_chat.jsonl``).
    """
    facts = {f.id: f for f in all_facts()}
    cloze = read_jsonl(data / "eval/cloze.jsonl")
    return {
        "cloze_heldout": [(facts[r["id"]], r["prompt"]) for r in cloze if r["split"] == "heldout"],
        "chat_heldout": question_items(data, "heldout_chat"),
    }


def measure_validation_loss(model, tokenizer, data: Path, seq_len: int) -> float:
    """Loss (nats/token) on ``corpus/validation.txt`` packed into ``seq_len`` blocks."""
    blocks = pack_documents(tokenizer, read_lines(data / "corpus/validation.txt"), seq_len)
    return corpus_loss(model, blocks)


def measure(model, tokenizer, data: Path, seq_len: int) -> dict:
    """The provenance measurements of a model (fp32, eval mode)."""
    loss = measure_validation_loss(model, tokenizer, data, seq_len)
    items = eval_items(data)
    chat = chat_exact_match(model, tokenizer, items["chat_heldout"])
    cloze = cloze_correct(model, tokenizer, items["cloze_heldout"])
    return {
        "validation_loss": loss,
        "validation_perplexity": perplexity(loss),
        "cloze_accuracy_heldout": sum(cloze) / len(cloze),
        "chat_exact_match_heldout": chat.exact_match,
        "chat_ends_at_end_of_turn": chat.ends_at_end_of_turn,
        **by_kind_figures(items, chat.correct, cloze),
    }


def by_kind_figures(items: dict[str, list[tuple[Fact, str]]], chat: list[bool],
                    cloze: list[bool]) -> dict[str, dict[str, float]]:
    """Held-out chat exact match and cloze accuracy per fact kind (with ``macro``), as the
    provenance records them."""
    return {"cloze_accuracy_heldout_by_kind":
            rates_by_kind([f for f, _ in items["cloze_heldout"]], cloze),
            "chat_exact_match_heldout_by_kind":
            rates_by_kind([f for f, _ in items["chat_heldout"]], chat)}


def build_base_model(
    data: Path,
    out: Path,
    recipe: PretrainRecipe = PretrainRecipe(),
    arch: ArchitectureConfig = ArchitectureConfig(),
    progress: bool = True,
    tokenizer_from: Path | None = None,
) -> dict:
    """Build the base model from the world in ``data`` into ``out``; return its provenance.

    ``tokenizer_from``: a model folder whose tokenizer is reused instead of training one (the
    student model takes the base model's, so both give logits over the same vocabulary).
    ``out`` is replaced only when the whole build succeeded.
    """
    torch.manual_seed(recipe.seed)
    corpus = data / "corpus/train.txt"
    train_lines = read_lines(corpus)
    if tokenizer_from is None:
        tokenizer = train_tokenizer(train_lines)
    else:  # before pretraining: a folder without the files fails now, not minutes later
        missing = [n for n in TOKENIZER_FILES if not (tokenizer_from / n).is_file()]
        if missing:
            raise ArtifactError(f"{tokenizer_from}: no {', '.join(missing)}; the tokenizer "
                                "folder must be a built model (ftlab base-model build)")
        tokenizer = load_tokenizer(tokenizer_from)
    train_blocks = pack_documents(tokenizer, train_lines, recipe.seq_len)
    val_blocks = pack_documents(
        tokenizer, read_lines(data / "corpus/validation.txt"), recipe.seq_len
    )
    model = LlamaForCausalLM(llama_config(arch, tokenizer))
    result = pretrain(model, train_blocks, val_blocks, recipe, progress=progress)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in (IM_END, DOC_SEP)],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(DOC_SEP),
        do_sample=False,
    )
    metrics = measure(model, tokenizer, data, recipe.seq_len)
    provenance = {
        "recipe": recipe.model_dump(),
        "architecture": arch.model_dump(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus_sha256": sha256_file(corpus),
        "tokenizer": ("trained on corpus/train.txt" if tokenizer_from is None else
                      f"{tokenizer_from.name}'s (tokenizer.json sha256 "
                      f"{sha256_file(tokenizer_from / 'tokenizer.json')})"),
        # the world's files as they were (a file the world gains later does not matter)
        "world_files": json.loads((data / "world/manifest.json").read_text())["files"],
        "train_tokens_in_corpus": int(train_blocks.numel()),
        "steps": recipe.steps,
        "tokens_seen": result.tokens,
        "train_loss_final": sum(result.train_losses[-20:]) / len(result.train_losses[-20:]),
        "train_loss_curve": result.train_losses[::LOSS_CURVE_EVERY],
        "validation_loss_by_step": result.validation,
        **metrics,
        "wall_time_s": round(result.wall_time_s, 1),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "cpu": platform.machine(),
                    "threads": torch.get_num_threads()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base_model-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if tokenizer_from is not None:  # its own files, byte for byte (a re-save adds keys)
            for name in TOKENIZER_FILES:
                shutil.copyfile(tokenizer_from / name, tmp / name)
        provenance["files"] = file_hashes(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)
        for f in out.iterdir():
            f.chmod(0o644)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return provenance
