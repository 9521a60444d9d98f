"""Benchmark: NF4 quantization speed and size against bitsandbytes; training-step memory of
full fine-tuning, LoRA and QLoRA against theory.

What is measured
----------------
1. **Quantize / dequantize** a float32 weight (default 4096 x 4096, seeded normal * 0.02) to NF4
   with block 64 and double quantization: ``ftlab.quant.quantize_weight`` /
   ``NF4Weight.dequantize`` against ``bitsandbytes.functional.quantize_4bit(...,
   compress_statistics=True)`` / ``dequantize_4bit`` on the CPU, same process, interleaved,
   median of ``--repeats`` runs each. Reported: ms, the ratio ours / bitsandbytes (< 1: ours is
   faster), bits per weight measured from the stored tensors of each, and whether the 4-bit codes
   are identical.
2. **Peak memory of a training step** on a randomly initialised Llama of ~52M parameters
   (hidden 768, 8 layers, 12 heads, 4 KV heads, intermediate 2048, vocab 1658, tied), batch
   2 x 128, float32, AdamW: full fine-tuning, LoRA (r 16, all 7 projections, ftlab), QLoRA with
   ftlab's NF4 layers and QLoRA through transformers + bitsandbytes (``load_quantized``). Each
   mode runs in a fresh Python process: the resident memory before the model is built is the
   baseline; after the model is prepared, the high-water mark is reset and two steps run (the
   first creates Adam's state). The full, LoRA and ftlab-QLoRA models are built in memory from
   the config (seeded); the bitsandbytes one is loaded from a saved copy, and transformers keeps
   that checkpoint memory-mapped, so its file pages count in its resident memory. Reported: peak resident memory above the baseline, the theory
   for weights + gradients + Adam states (``training_state_theory``; activations are not in it),
   and QLoRA / LoRA ratios of both.

Run: ``.venv/bin/python benchmarks/bench_qlora.py [--repeats 5] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment  # noqa: E402

BATCH = (2, 128)
"""Small enough that weights, gradients and optimizer state, not activations, dominate."""
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""Children allocate large tensors with mmap so freed memory leaves the resident set at once
(glibc otherwise raises its mmap threshold and keeps freed blocks, which RSS would count)."""
MODES = ("full", "lora", "qlora-ftlab", "qlora-bitsandbytes")
LLAMA = dict(vocab_size=1658, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
             num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True)


def quantize_speed(size: int, repeats: int) -> dict:
    import bitsandbytes.functional as bnbf
    import torch

    from ftlab.quant import quantize_weight

    torch.manual_seed(0)
    w = torch.randn(size, size) * 0.02
    times = {k: [] for k in ("ours_q", "bnb_q", "ours_dq", "bnb_dq")}
    for _ in range(repeats):
        t = time.perf_counter()
        ours = quantize_weight(w)
        times["ours_q"].append(time.perf_counter() - t)
        t = time.perf_counter()
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                           compress_statistics=True)
        times["bnb_q"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ours.dequantize()
        times["ours_dq"].append(time.perf_counter() - t)
        t = time.perf_counter()
        bnbf.dequantize_4bit(packed, state)
        times["bnb_dq"].append(time.perf_counter() - t)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    bnb_bytes = sum(t.numel() * t.element_size() for t in
                    (packed, state.absmax, state.state2.absmax, state.offset.reshape(1)))
    return {"size": [size, size], "ms": ms,
            "quantize_ratio": ms["ours_q"] / ms["bnb_q"],
            "dequantize_ratio": ms["ours_dq"] / ms["bnb_dq"],
            "bits_ours": 8 * ours.nbytes / w.numel(), "bits_bnb": 8 * bnb_bytes / w.numel(),
            "codes_identical": bool(torch.equal(ours.packed, packed.reshape(-1)))}


def child(mode: str, folder: str) -> None:
    """Run in a fresh process: prepare ``mode``, run two steps, print one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ftlab.lora import find_target_modules, inject_lora
    from ftlab.quant import load_quantized, peak_memory, prepare_qlora, rss_mb
    from ftlab.quant.memory import training_state_theory

    torch.manual_seed(0)
    base = rss_mb()
    if mode == "qlora-bitsandbytes":
        model = load_quantized(folder)
        inject_lora(model, find_target_modules(model), r=16, alpha=32)
    else:  # built in memory: a loaded checkpoint's file pages would stay resident
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA))
        if mode == "lora":
            inject_lora(model, find_target_modules(model), r=16, alpha=32)
        elif mode == "qlora-ftlab":
            prepare_qlora(model, r=16, alpha=32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(3, LLAMA["vocab_size"], BATCH)
    theory = training_state_theory(model)
    step_s = []
    with peak_memory() as mem:
        for _ in range(2):
            t = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_s.append(time.perf_counter() - t)
    print(json.dumps({"mode": mode, "peak_mb": mem["rss_peak_mb"] - base,
                      "theory_mb": theory, "step_s": step_s[-1],
                      "trainable": sum(p.numel() for p in params),
                      "total": sum(p.numel() for p in model.parameters())}))


def memory_table() -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA)).save_pretrained(folder)
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--child", mode, folder],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, **ENV}).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  {mode}: peak {rows[-1]['peak_mb']:.0f} MB, theory "
                  f"{rows[-1]['theory_mb']['total']:.0f} MB", flush=True)
    return rows


def markdown(speed: dict, rows: list[dict], env: dict) -> str:
    ms = speed["ms"]
    lines = [f"# QLoRA benchmark ({env['date']}, {env['cpu_count']} CPUs, torch "
             f"{env['torch']}, bitsandbytes {env['bitsandbytes']})", "",
             f"## NF4 + double quantization of a {speed['size'][0]}x{speed['size'][1]} "
             "float32 weight (CPU)", "",
             "| step | ftlab ms | bitsandbytes ms | ours / bnb |", "|---|---|---|---|",
             f"| quantize | {ms['ours_q']:.1f} | {ms['bnb_q']:.1f} | {speed['quantize_ratio']:.2f} |",
             f"| dequantize | {ms['ours_dq']:.1f} | {ms['bnb_dq']:.1f} | "
             f"{speed['dequantize_ratio']:.2f} |", "",
             f"Bits per weight: ftlab {speed['bits_ours']:.4f}, bitsandbytes "
             f"{speed['bits_bnb']:.4f} (theory 4.1270). 4-bit codes identical: "
             f"{speed['codes_identical']}.", "",
             f"## Training-step memory, {rows[0]['total'] / 1e6:.1f}M-parameter Llama, "
             f"batch {BATCH[0]}x{BATCH[1]}, float32, AdamW", "",
             "| mode | trainable | peak RSS above baseline (MB) | theory: weights + grads + "
             "Adam (MB) | step s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['trainable']:,} | {r['peak_mb']:.0f} | "
                     f"{r['theory_mb']['total']:.0f} | {r['step_s']:.2f} |")
    by = {r["mode"]: r for r in rows}
    lines += ["", "QLoRA / LoRA: measured "
              f"{by['qlora-ftlab']['peak_mb'] / by['lora']['peak_mb']:.2f} (ftlab), "
              f"{by['qlora-bitsandbytes']['peak_mb'] / by['lora']['peak_mb']:.2f} (bitsandbytes); "
              f"theory {by['qlora-ftlab']['theory_mb']['total'] / by['lora']['theory_mb']['total']:.2f}"
              ". The difference between measured and theory is activations and allocator "
              "overhead, which quantization does not shrink."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    env = environment("transformers", "bitsandbytes", "peft")
    print("quantize / dequantize speed …", flush=True)
    speed = quantize_speed(args.size, args.repeats)
    print("training-step memory …", flush=True)
    rows = memory_table()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "qlora.json").write_text(json.dumps(
        {"environment": env, "quantize": speed, "memory": rows}, indent=2) + "\n")
    report = markdown(speed, rows, env)
    (args.out / "qlora.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
