"""Write the world's files into a data folder, byte-identical for the same seed.

Layout under ``out``::

    world/facts.json            every fact with its split (sft / heldout)
    world/manifest.json         seed, generator version, sha256 of every file below
    corpus/train.txt            pretraining documents, one per line
    corpus/validation.txt       held-out corpus text (general-text perplexity)
    sft/alpaca.json             polite answers, SFT-split facts, in every M1 format:
    sft/messages.jsonl            alpaca, chat messages, ShareGPT, prompt/completion,
    sft/sharegpt.json             question/answer CSV and Parquet (messages column)
    sft/prompt_completion.jsonl
    sft/qa.csv
    sft/messages.parquet
    sft/mixed_style.jsonl       the capstone's SFT set: 60% terse or rude answers
    preferences/train.jsonl     style and entity pairs on SFT-split facts (TRL format)
    preferences/heldout.jsonl   the same on held-out facts
    preferences/reward_train.jsonl  train.jsonl's pairs plus same-style right-vs-wrong pairs:
                                what a reward model trains on
    eval/heldout_chat.jsonl     questions on facts held out of SFT
    eval/seen_chat.jsonl        SFT-split facts asked in phrasings sft/ never uses
    eval/cloze.jsonl            plain-completion prompts for every fact
    rl/prompts.jsonl            questions on held-out facts in phrasings the evaluation never
                                uses, 36 per kind (GRPO)
    rl/sft_prompts.jsonl        questions on SFT-split facts, 36 per kind, none of
                                eval/seen_chat's (online DPO: a style learned on what the model
                                already answers)
    midtrain/facts.json         the mid-training track's new facts (facts.new_facts), which no
                                file above mentions
    midtrain/corpus.txt         plain text stating them in varied phrasings, one document a line
    midtrain/validation.txt     more of it, other documents (held-out loss)
    midtrain/cloze.jsonl        a plain-completion prompt per new fact
    midtrain/chat.jsonl         chat questions about them (3 per fact)
    midtrain/manifest.json      seed, generator version, sha256 of the midtrain files: its own
                                manifest, so world/manifest.json (which the base model's
                                provenance records) stays what the base model was trained on
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ftlab.world import corpus, datasets
from ftlab.world.facts import all_facts, new_facts, split_facts

GENERATOR_VERSION = 2
"""Bump when the generator's output changes for the same seed."""
DEFAULT_SEED = 0
ALPACA_INPUT_SHARE = 1 / 3
"""Share of alpaca records whose question sits in ``input`` under a generic instruction."""
ALPACA_INSTRUCTION = "Answer the following question."
MANIFEST = "world/manifest.json"


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def _json(obj: object) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode()


def _messages(ex: dict) -> list[dict]:
    msgs = [{"role": "system", "content": ex["system"]}] if ex["system"] else []
    return msgs + [
        {"role": "user", "content": ex["question"]},
        {"role": "assistant", "content": ex["response"]},
    ]


def _alpaca(examples: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for ex in examples:
        if rng.random() < ALPACA_INPUT_SHARE:
            out.append({"instruction": ALPACA_INSTRUCTION, "input": ex["question"],
                        "output": ex["response"]})
        else:
            out.append({"instruction": ex["question"], "input": "", "output": ex["response"]})
    return out


def _sharegpt(examples: list[dict]) -> list[dict]:
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    return [
        {"conversations": [{"from": speaker[m["role"]], "value": m["content"]}
                           for m in _messages(ex)]}
        for ex in examples
    ]


def _csv(examples: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["question", "answer"])
    writer.writerows([ex["question"], ex["response"]] for ex in examples)
    return buf.getvalue().encode()


def _parquet(examples: list[dict]) -> bytes:
    table = pa.table({"messages": [_messages(ex) for ex in examples]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def world_files(seed: int = DEFAULT_SEED) -> dict[str, bytes]:
    """Every world file as relative path -> bytes (the manifest excluded)."""
    facts = all_facts()
    split = split_facts(facts, seed)
    sft_facts = [f for f in facts if split[f.id] == "sft"]
    held_facts = [f for f in facts if split[f.id] == "heldout"]

    def rng(stream: str) -> random.Random:
        return random.Random(f"{seed}:{stream}")

    polite = datasets.sft_examples(sft_facts, rng("sft"), {"polite": 1.0})
    mixed = datasets.sft_examples(sft_facts, rng("sft-mixed"), datasets.MIXED_STYLE_WEIGHTS)
    trained = frozenset(ex["question"] for ex in polite)
    files = {
        "world/facts.json": _json([
            {"id": f.id, "kind": f.kind, "subject": f.subject, "answer": f.answer,
             "split": split[f.id]} for f in facts
        ]),
        "corpus/train.txt": "\n".join(
            corpus.corpus_lines(facts, corpus.TRAIN_PARAGRAPHS, rng("corpus-train"))
        ).encode() + b"\n",
        "corpus/validation.txt": "\n".join(
            corpus.corpus_lines(facts, corpus.VALIDATION_PARAGRAPHS, rng("corpus-validation"))
        ).encode() + b"\n",
        "sft/alpaca.json": _json(_alpaca(polite, rng("alpaca"))),
        "sft/messages.jsonl": _jsonl([{"messages": _messages(ex)} for ex in polite]),
        "sft/sharegpt.json": _json(_sharegpt(polite)),
        "sft/prompt_completion.jsonl": _jsonl(
            [{"prompt": ex["question"], "completion": ex["response"]} for ex in polite]
        ),
        "sft/qa.csv": _csv(polite),
        "sft/messages.parquet": _parquet(polite),
        "sft/mixed_style.jsonl": _jsonl(
            [{"messages": _messages(ex), "style": ex["style"]} for ex in mixed]
        ),
        "preferences/train.jsonl": _jsonl(
            datasets.preference_pairs(sft_facts, facts, rng("pref-train"))
        ),
        "preferences/reward_train.jsonl": _jsonl(
            datasets.preference_pairs(sft_facts, facts, rng("pref-train"))
            + datasets.reward_pairs(sft_facts, facts, rng("pref-reward"))
        ),
        "preferences/heldout.jsonl": _jsonl(
            datasets.preference_pairs(held_facts, facts, rng("pref-heldout"))
        ),
        "eval/heldout_chat.jsonl": _jsonl(datasets.chat_eval(
            held_facts, datasets.HELDOUT_QUESTIONS_PER_FACT, rng("eval-heldout")
        )),
        "eval/seen_chat.jsonl": _jsonl(
            datasets.chat_eval(sft_facts, 1, rng("eval-seen"), exclude=trained)
        ),
        "eval/cloze.jsonl": _jsonl(datasets.cloze_eval(facts, split)),
    }
    evaluated = frozenset(json.loads(line)["question"]
                          for line in files["eval/heldout_chat.jsonl"].decode().splitlines())
    files["rl/prompts.jsonl"] = _jsonl(datasets.rl_prompts(held_facts, evaluated, rng("rl")))
    seen = frozenset(json.loads(line)["question"]
                     for line in files["eval/seen_chat.jsonl"].decode().splitlines())
    files["rl/sft_prompts.jsonl"] = _jsonl(datasets.rl_prompts(sft_facts, seen, rng("rl-sft")))
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(files: dict[str, bytes], seed: int) -> dict:
    """Seed, generator version and sha256 of each file."""
    return {
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "files": {rel: sha256(data) for rel, data in sorted(files.items())},
    }


MIDTRAIN_MANIFEST = "midtrain/manifest.json"
MIDTRAIN_TRAIN_PARAGRAPHS = 4000
MIDTRAIN_VALIDATION_PARAGRAPHS = 200
MIDTRAIN_QUESTIONS_PER_FACT = 3


def midtrain_files(seed: int = DEFAULT_SEED) -> dict[str, bytes]:
    """The mid-training track's files (the manifest excluded): its new facts, a corpus that
    states only them (subject-centred and mixed paragraphs, as the world's corpus), and
    their cloze and chat evaluation sets."""
    facts = new_facts()

    def rng(stream: str) -> random.Random:
        return random.Random(f"{seed}:midtrain-{stream}")

    new = {f.id: "new" for f in facts}
    return {
        "midtrain/facts.json": _json([{"id": f.id, "kind": f.kind, "subject": f.subject,
                                       "answer": f.answer} for f in facts]),
        "midtrain/corpus.txt": "\n".join(corpus.corpus_lines(
            facts, MIDTRAIN_TRAIN_PARAGRAPHS, rng("corpus"), dialogues=False)).encode() + b"\n",
        "midtrain/validation.txt": "\n".join(corpus.corpus_lines(
            facts, MIDTRAIN_VALIDATION_PARAGRAPHS, rng("validation"), dialogues=False)
        ).encode() + b"\n",
        "midtrain/cloze.jsonl": _jsonl(datasets.cloze_eval(facts, new)),
        "midtrain/chat.jsonl": _jsonl(datasets.chat_eval(facts, MIDTRAIN_QUESTIONS_PER_FACT,
                                                         rng("chat"))),
    }


def all_world_files(seed: int = DEFAULT_SEED) -> dict[str, bytes]:
    """:func:`world_files` plus ``world/manifest.json``, and :func:`midtrain_files` plus
    ``midtrain/manifest.json``."""
    files, midtrain = world_files(seed), midtrain_files(seed)
    return {**files, MANIFEST: _json(manifest(files, seed)),
            **midtrain, MIDTRAIN_MANIFEST: _json(manifest(midtrain, seed))}


def build_world(out: Path, seed: int = DEFAULT_SEED) -> list[str]:
    """Write the world (and the mid-training files) into ``out``; return the paths written,
    relative to ``out``."""
    files = all_world_files(seed)
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sorted(files)

def diff_world(data: Path, seed: int = DEFAULT_SEED) -> list[str]:
    """Files under ``data`` that differ from (or lack) a fresh build with ``seed``."""
    problems = []
    for rel, expected in all_world_files(seed).items():
        path = data / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_bytes() != expected:
            problems.append(f"{path}: differs from a fresh build with seed {seed}")
    return problems
