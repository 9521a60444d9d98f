"""Benchmark: data-parallel training on this machine, and what a step moves over the wire.

What is measured
----------------
1. **Throughput of two process layouts on the same cores**: LoRA SFT of the embedded model
   (r 16 on the attention projections, the capstone's SFT data, micro-batch 8, 30 steps,
   float32) with the ftlab Trainer as 2 data-parallel processes x 1 thread (gloo, DDP, M4.6)
   against 1 process x 2 threads and 1 process x 1 thread, interleaved, ``--repeats`` times
   each. Reported: real (non-padding) tokens/s of the whole group (median step, median over
   repeats), the ratio 2x1 / 1x2, and the scaling efficiency 2x1 / (2 x 1x1).
2. **Bytes per step**, counted from the parameters (:class:`ftlab.train.scaling.Communication`,
   ring algorithms) for LoRA r 16 and full fine-tuning of the embedded model and of the real
   models of ``configs/`` (their published shapes, on the meta device), with 2 and 8
   processes — and checked against the gradient bytes DDP actually hands to its all-reduce
   (a communication hook counting bucket sizes) for the embedded model in 2 processes.
3. **Projection to 8 GPUs on one node**: the time of those bytes at stated bandwidths
   (assumptions in the table), next to nothing else — compute time depends on the GPU.

Run: ``.venv/bin/python benchmarks/bench_data_parallel.py [--repeats 3] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import ROOT, environment  # noqa: E402

from ftlab.train.distributed import ranks, run_processes, wrap  # noqa: E402
from ftlab.train.scaling import (Communication, capstone_lora, embedded_lora_run,  # noqa: E402
                                 parameter_counts, real_model)

STEPS = 30
BANDWIDTHS = {"NVLink (H100 SXM, ~150 GB/s all-reduce bus bandwidth per GPU)": 150e9,
              "PCIe 4.0 x16 without NVLink (~12 GB/s)": 12e9}
"""Assumed sustained bandwidth of a large ring all-reduce per GPU (NCCL's "bus bandwidth");
the README's table states them."""


def _one(threads: int) -> float:
    torch.set_num_threads(threads)
    return embedded_lora_run(STEPS)["tokens_per_s"]


def _two() -> float:
    return run_processes(embedded_lora_run, 2, STEPS)[0]["tokens_per_s"]


def throughput(repeats: int) -> dict:
    runs: dict[str, list[float]] = {"2 processes x 1 thread": [], "1 process x 2 threads": [],
                                    "1 process x 1 thread": []}
    for _ in range(repeats):  # interleaved: machine noise hits every layout alike
        runs["2 processes x 1 thread"].append(_two())
        runs["1 process x 2 threads"].append(_one(2))
        runs["1 process x 1 thread"].append(_one(1))
    median = {k: statistics.median(v) for k, v in runs.items()}
    return {"tokens_per_s": median, "runs": runs,
            "two_vs_one_process": median["2 processes x 1 thread"] / median["1 process x 2 threads"],
            "scaling_efficiency": median["2 processes x 1 thread"]
            / (2 * median["1 process x 1 thread"])}


def _hooked_bytes() -> int:
    """Gradient bytes DDP hands to its all-reduce in one step (LoRA r 16 on the embedded
    model), counted by a communication hook."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from ftlab.models import load_base_model

    model = capstone_lora(load_base_model()[0])
    ddp = wrap(model.train(), "ddp")
    counted = [0]

    def hook(state, bucket):
        counted[0] += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, hook)
    ids = torch.randint(3, 200, (2, 32))
    ddp(input_ids=ids, labels=ids).loss.backward()
    return counted[0] if ranks().is_main else -1


def communication() -> dict:
    from ftlab.models import load_base_model

    embedded = capstone_lora(load_base_model()[0])
    models = {"embedded (capstone LoRA: r 16, attention)": embedded,
              **{f"{name} (configs/: r 16, all projections)": real_model(name)
                 for name in ("SmolLM2-135M", "Qwen2.5-0.5B")}}
    rows = []
    for name, model in models.items():
        trainable, total = parameter_counts(model)
        base = total - trainable
        for world in (2, 8):
            lora, full = Communication(trainable, total, world), Communication(base, base, world)
            rows.append({"model": name, "processes": world, "lora_params": trainable,
                         "base_params": base, "ddp_lora_bytes": lora.ddp,
                         "ddp_full_bytes": full.ddp, "fsdp_lora_bytes": lora.fsdp,
                         "fsdp_full_bytes": full.fsdp})
    hooked = run_processes(_hooked_bytes, 2)[0]
    return {"rows": rows, "ddp_hook_gradient_bytes_embedded": hooked,
            "gradient_bytes_computed_embedded": parameter_counts(embedded)[0] * 4}


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}" if b < 2**20 * 100 else f"{b / 2**20:,.0f}"


def markdown(result: dict) -> str:
    t = result["throughput"]
    lines = ["# Data parallelism: throughput on this machine, bytes per step", "",
             f"Environment: {json.dumps(result['environment'])}", "",
             f"## 1. LoRA SFT of the embedded model, {STEPS} steps x micro-batch 8, float32 "
             f"(median of {len(t['runs']['1 process x 1 thread'])} interleaved runs)", "",
             "| layout | real tokens/s (whole group) | runs |", "|---|---:|---|"]
    lines += [f"| {k} | {v:,.0f} | {', '.join(f'{x:,.0f}' for x in t['runs'][k])} |"
              for k, v in t["tokens_per_s"].items()]
    lines += ["", f"2 processes x 1 thread / 1 process x 2 threads: **{t['two_vs_one_process']:.2f}x**; "
              f"scaling efficiency of 2 processes (vs 2 x one 1-thread process): "
              f"**{t['scaling_efficiency']:.0%}**.", "",
              "## 2. Bytes one process sends per optimizer step (float32, ring algorithms)", "",
              "| model | processes | LoRA params | DDP, LoRA (MiB) | DDP, full fine-tuning (MiB) "
              "| full / LoRA | FSDP2, LoRA (MiB) | FSDP2, full (MiB) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    c = result["communication"]
    lines += [f"| {r['model']} | {r['processes']} | {r['lora_params'] / 1e6:.2f}M | "
              f"{_mib(r['ddp_lora_bytes'])} | {_mib(r['ddp_full_bytes'])} | "
              f"{r['ddp_full_bytes'] / r['ddp_lora_bytes']:.0f}x | {_mib(r['fsdp_lora_bytes'])} | "
              f"{_mib(r['fsdp_full_bytes'])} |" for r in c["rows"]]
    lines += ["", f"Checked: DDP's communication hook received {c['ddp_hook_gradient_bytes_embedded']:,} "
              f"gradient bytes per step for the embedded LoRA model in 2 processes; the count "
              f"from its parameters is {c['gradient_bytes_computed_embedded']:,}.", "",
              "## 3. Projected: 8 GPUs on one node, time of one step's communication", "",
              "Assumptions: a large ring all-reduce sustains the stated bandwidth per GPU; "
              "no overlap with compute is counted (DDP overlaps its buckets with the backward "
              "pass, so the real cost is lower); float32 gradients.", "",
              "| model | bandwidth | DDP, LoRA | DDP, full fine-tuning |", "|---|---|---:|---:|"]
    for r in (r for r in c["rows"] if r["processes"] == 8):
        for label, bw in BANDWIDTHS.items():
            lines.append(f"| {r['model']} | {label} | {r['ddp_lora_bytes'] / bw * 1e3:.2f} ms | "
                         f"{r['ddp_full_bytes'] / bw * 1e3:.1f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    result = {"environment": environment("transformers"),
              "throughput": throughput(args.repeats), "communication": communication()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_parallel.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "data_parallel.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
