"""Benchmark: the embedded student model beside the base model it learns from.

What is measured
----------------
For ``data/base_model`` (the teacher of the distillation track) and ``data/student_model``:
parameters, the safetensors file's size, the provenance figures (validation perplexity,
held-out cloze accuracy per kind and macro) and greedy generation speed: ``generate`` with
``do_sample=False`` of exactly ``--new-tokens`` tokens (``min_new_tokens`` set, so no early
stop) after 16-token prompts from the held-out corpus, at batch 1 and batch 16, in float32 on
``torch.get_num_threads()`` threads; the median of ``--repeats`` timed runs after one warm-up,
both models in the same process, one after the other.

Results: ``<out>/student.json`` and ``student.md``.
Run: ``.venv/bin/python benchmarks/bench_student.py`` on an otherwise idle machine (~1 min).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _env import ROOT, environment

from ftlab.models import load_base_model
from ftlab.paths import base_model_dir, data_dir, student_model_dir


def tokens_per_second(model, prompts: torch.Tensor, new_tokens: int, repeats: int,
                      pad_id: int) -> float:
    """Median generated tokens per second of greedy ``generate`` over ``repeats`` runs."""
    def run() -> float:
        start = time.perf_counter()
        model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
        return prompts.shape[0] * new_tokens / (time.perf_counter() - start)

    run()  # warm-up
    return statistics.median(run() for _ in range(repeats))


def size_and_speed(folder: Path, new_tokens: int, repeats: int) -> dict:
    """The model folder ``folder``'s parameters, safetensors size (MiB), shape and greedy
    tokens/s at batch 1 and 16 (16-token prompts from the held-out corpus)."""
    model, tokenizer = load_base_model(folder)
    lines = (data_dir() / "corpus/validation.txt").read_text().splitlines()
    ids = [tokenizer(line, add_special_tokens=False).input_ids[:16] for line in lines]
    prompts = torch.tensor([i for i in ids if len(i) == 16][:16])
    with torch.no_grad():
        speed = {f"batch {b}": tokens_per_second(model, prompts[:b], new_tokens, repeats,
                                                 tokenizer.pad_token_id) for b in (1, 16)}
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "file_mb": (folder / "model.safetensors").stat().st_size / 2**20,  # MiB
            "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "tokens_per_s": speed}


def measure(folder: Path, new_tokens: int, repeats: int) -> dict:
    prov = json.loads((folder / "provenance.json").read_text())
    return {**size_and_speed(folder, new_tokens, repeats),
            "validation_perplexity": prov["validation_perplexity"],
            "cloze_heldout": prov["cloze_accuracy_heldout_by_kind"]}


def table(report: dict) -> str:
    env, base, student = report["environment"], report["base"], report["student"]
    kinds = [k for k in base["cloze_heldout"] if k != "macro"]
    rows = [("parameters", lambda m: f"{m['parameters']:,}"),
            ("layers × width", lambda m: f"{m['layers']} × {m['hidden']}"),
            ("model.safetensors (float32)", lambda m: f"{m['file_mb']:.1f} MiB"),
            ("validation perplexity (held-out corpus)", lambda m: f"{m['validation_perplexity']:.3f}"),
            ("held-out cloze, macro over kinds", lambda m: f"{m['cloze_heldout']['macro']:.1%}"),
            ("held-out cloze per kind (" + " / ".join(kinds) + ")",
             lambda m: " / ".join(f"{m['cloze_heldout'][k]:.0%}" for k in kinds)),
            *[(f"greedy tokens/s, {b}", lambda m, b=b: f"{m['tokens_per_s'][b]:.0f}")
              for b in base["tokens_per_s"]]]
    lines = ["# The student model beside the base model", "",
             f"{env['date']}, {env['cpu']['model']} ({env['cpu_count']} CPUs, torch kernels "
             f"{env['cpu']['torch_capability']}, {env['torch_threads']} torch threads), torch "
             f"{env['torch']}, commit {env['git_commit']}. Produced by "
             f"`benchmarks/bench_student.py`: {report['new_tokens']} new tokens per prompt, "
             f"median of {report['repeats']} runs.", "",
             "| figure | base model (teacher) | student | student / base |", "|---|---:|---:|---:|"]
    for label, cell in rows:
        ratio = ""
        if label.startswith("parameters"):
            ratio = f"{student['parameters'] / base['parameters']:.2f}×"
        elif label.startswith("greedy"):
            key = label.split(", ")[1]
            ratio = f"{student['tokens_per_s'][key] / base['tokens_per_s'][key]:.2f}×"
        lines.append(f"| {label} | {cell(base)} | {cell(student)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    report = {"environment": environment("transformers"), "new_tokens": args.new_tokens,
              "repeats": args.repeats,
              "base": measure(base_model_dir(), args.new_tokens, args.repeats),
              "student": measure(student_model_dir(), args.new_tokens, args.repeats)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "student.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "student.md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
