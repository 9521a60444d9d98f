"""Benchmark: each export format of a fine-tuned model — time, size, and quality relative to the
float32 merged model.

What is measured
----------------
A LoRA SFT of the embedded model (r 16, alpha 32, all 7 projections, ``--steps`` steps of batch 8
on ``data/sft/messages.jsonl``, lr 3e-3, seed 0) is merged in float32
(``ftlab.export.merge_for_export``) and written as: a Hugging Face folder in float32, bfloat16 and
float16 (``export_hf``), and GGUF files in f32, f16 and q8_0 (``export_gguf``). Per format:

* **export s**: median of ``--repeats`` exports (HF: ``save_pretrained`` of the cast copy,
  tokenizer and model card; GGUF: the whole file);
* **MB**: the weights file (``model.safetensors`` / the ``.gguf`` file), MiB;
* loaded back as a user would — HF with ``AutoModelForCausalLM.from_pretrained`` (in the stored
  dtype; bfloat16 and float16 then compute in that dtype), GGUF with transformers' GGUF loader
  (which dequantizes to float32, so only the storage error shows) — then: **max logit diff** vs
  the float32 merged model on the validation replies, **response perplexity** on the validation
  split (``ftlab.evaluate.perplexity``), **held-out exact match** (162 questions,
  ``evaluate_questions``, greedy, 24 new tokens) and **same answers**: the share of the 162
  replies identical to the float32 model's.

Run: ``.venv/bin/python benchmarks/bench_export.py [--steps 120] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _env import environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ftlab.config import DataConfig, TrainConfig
    from ftlab.data import collate, prepare_sft
    from ftlab.evaluate import evaluate_questions, perplexity
    from ftlab.export import export_gguf, export_hf, merge_for_export
    from ftlab.lora import find_target_modules, inject_lora
    from ftlab.models import load_base_model
    from ftlab.models.build import eval_items
    from ftlab.paths import data_dir
    from ftlab.train import Trainer

    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="ftlab-bench-export-"))
    tuned, tokenizer = load_base_model()
    data = prepare_sft(DataConfig(path=data_dir() / "sft/messages.jsonl", max_length=128),
                       tokenizer)
    torch.manual_seed(0)
    inject_lora(tuned, find_target_modules(tuned), r=16, alpha=32, dropout=0.05)
    Trainer(tuned, data.train, TrainConfig(max_steps=args.steps, batch_size=8, lr=3e-3,
                                           eval_every=10**6), work / "sft",
            tokenizer.pad_token_id, progress=False).fit()
    tuned.eval()
    val = [collate(data.validation[i:i + 8], tokenizer.pad_token_id)
           for i in range(0, len(data.validation), 8)]
    ids = torch.cat([b["input_ids"] for b in val[:1]])
    merged = merge_for_export(tuned, ids).model
    items = eval_items(data_dir())["chat_heldout"]

    def quality(model):
        with torch.no_grad():
            logits = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                      .logits.float() for b in val]
        result = evaluate_questions(model, tokenizer, items, max_new_tokens=24, batch_size=32)
        return logits, perplexity(model, val).perplexity, result

    ref_logits, ref_ppl, ref_result = quality(merged)
    formats = [("HF float32", "hf", "float32"), ("HF bfloat16", "hf", "bfloat16"),
               ("HF float16", "hf", "float16"), ("GGUF f32", "gguf", "f32"),
               ("GGUF f16", "gguf", "f16"), ("GGUF q8_0", "gguf", "q8_0")]
    rows = []
    for label, kind, dtype in formats:
        times = []
        for r in range(args.repeats):
            target = work / f"{kind}-{dtype}-{r}"
            start = time.perf_counter()
            if kind == "hf":
                export_hf(merged, tokenizer, target, dtype=dtype)
                weights = target / "model.safetensors"
            else:
                weights = export_gguf(merged, tokenizer, target.with_suffix(".gguf"), dtype,
                                      progress=False).path
            times.append(time.perf_counter() - start)
        if kind == "hf":
            loaded = AutoModelForCausalLM.from_pretrained(weights.parent, dtype="auto").eval()
        else:
            loaded = AutoModelForCausalLM.from_pretrained(weights.parent,
                                                          gguf_file=weights.name).eval()
        logits, ppl, result = quality(loaded)
        diff = max(float((a - b).abs().max()) for a, b in zip(logits, ref_logits))
        same = sum(a == b for a, b in zip(result.replies, ref_result.replies)) / len(items)
        rows.append({"format": label, "export_s": statistics.median(times),
                     "mb": weights.stat().st_size / 2**20, "max_logit_diff": diff,
                     "perplexity": ppl, "exact_match": result.rate("correct"),
                     "same_answers": same})
        print(f"{label}: {rows[-1]}", flush=True)

    header = ("| format | export s | MB | max logit diff vs fp32 | response perplexity "
              f"(fp32 {ref_ppl:.4f}) | held-out exact match (fp32 {ref_result.rate('correct'):.1%}) "
              "| answers identical to fp32 |\n|---|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['format']} | {r['export_s']:.3f} | {r['mb']:.1f} | {r['max_logit_diff']:.2e} | "
             f"{r['perplexity']:.4f} | {r['exact_match']:.1%} | {r['same_answers']:.1%} |"
             for r in rows]
    env = environment("transformers", "gguf", "safetensors")
    markdown = (f"# Export formats of a fine-tuned embedded model\n\n{env['date']}, torch "
                f"{env['torch']}, transformers {env['transformers']}, gguf {env['gguf']}; LoRA SFT "
                f"{args.steps} steps, merged in float32 (logit difference vs the adapted model "
                f"checked <= 1e-4); median of {args.repeats} exports. Produced by "
                "`benchmarks/bench_export.py`.\n\n" + header + "\n" + "\n".join(lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.md").write_text(markdown)
    (args.out / "export.json").write_text(json.dumps(
        {"environment": env, "steps": args.steps, "repeats": args.repeats,
         "reference": {"perplexity": ref_ppl, "exact_match": ref_result.rate("correct")},
         "rows": rows}, indent=1))
    print(markdown)


if __name__ == "__main__":
    main()
