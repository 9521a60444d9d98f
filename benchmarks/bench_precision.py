"""Benchmark: training precision against the machine's limit — matmul peak, MFU, profile.

What is measured
----------------
1. **Matmul peak**: ``ftlab.train.metrics.matmul_peak_flops`` (square ``n x n`` matmuls, one
   untimed warm-up, best of 5) in float32 and bfloat16 for ``n`` in ``--sizes`` and torch
   thread counts 1 and ``--threads``. The largest figure of a dtype is its **peak**, the
   denominator of every MFU below (the Trainer's own ``mfu`` field uses the 1024 figure at the
   run's thread count).
2. **Training**: the real ``ftlab.train.Trainer`` (``progress=False``, no validation) for
   ``--steps`` optimizer steps, in ``train.precision`` float32, bfloat16 and auto (auto
   reports what it chose), on two models:

   * **embedded**: the 4.6M-parameter embedded Llama in the capstone's SFT setting — data
     ``mixed_style.jsonl`` with 50% general-text replay via ``prepare_sft(max_length=80)``,
     LoRA r=16, alpha=32, dropout 0 on q/k/v/o, batch 8, lr 2e-3, length grouping on;
   * **large**: the 51.6M-parameter random-init Llama of ``bench_lora_step.py`` (hidden 768,
     8 layers, 12 heads, 4 KV heads, intermediate 2048, vocab 1658, tied embeddings), seeded
     random examples of 256 tokens (the first third prompt), batch 4, LoRA r=16, alpha=32,
     dropout 0 on all seven projections.

   Every run is a fresh subprocess with ``--threads`` torch threads; runs are interleaved
   (float32, bfloat16, auto, then backwards) ``--repeats`` times and the median reported.
   Per step (from ``metrics.jsonl``): wall seconds = tokens / tokens_per_s; reported are the
   median ms/step over steps 2..N, real tokens/s, the **model FLOP/s** = FLOPs per token
   (``ftlab.train.metrics.flops_per_token``: 4N + 2N_trainable over the matmul weights N) x
   tokens/s, and **MFU** against the float32 and the bf16 peak; the speed-up of bf16 over
   float32 (ratio of median ms/step).
3. **Profile**: ``torch.profiler`` over ``--profile-steps`` steps (after 3 warm-up steps) of
   the embedded model in float32 and the large one in both precisions; the self CPU time of
   every aten op grouped into matmuls, attention, LoRA dropout (RNG), optimizer, elementwise
   and other ops, and the rest of the wall time (Python, autograd and dispatch overhead
   between ops).

Results go to ``<out>/precision.json`` and ``<out>/precision.md``.

Run: ``.venv/bin/python benchmarks/bench_precision.py [--steps 40] [--large-steps 8]
[--repeats 2] [--out benchmarks/results]``; ``--quick`` for a smoke run. Use no more threads
than idle cores: on a busy machine the numbers mean nothing.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _env import ROOT, environment  # noqa: E402
from _models import LARGE, MODELS, benchmark_model  # noqa: E402

PRECISIONS = ("float32", "bfloat16", "auto")
MARK = "@@BENCH_PRECISION@@ "
CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
               "mkldnn", "onednn"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "dropout (RNG)": ("bernoulli", "native_dropout", "aten::dropout"),
    "optimizer": ("adam", "_foreach"),
    "elementwise": ("aten::mul", "aten::add", "aten::div", "aten::silu", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::neg", "aten::cat", "aten::sub",
                    "aten::exp", "aten::sum", "aten::copy_", "aten::to", "aten::_to_copy",
                    "aten::fill_", "aten::zero", "aten::clone", "aten::where"),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- workers

def build(which: str, precision: str, steps: int, seed: int = 0):
    """(model, examples, TrainConfig, pad_id, max_length) of a benchmark run."""
    import torch

    from ftlab.config import DataConfig, TrainConfig
    from ftlab.lora import find_target_modules, inject_lora

    if which == "embedded":
        from ftlab.data import prepare_sft
        from ftlab.paths import data_dir

        model, tokenizer = benchmark_model("embedded", seed)
        examples = prepare_sft(DataConfig(path=data_dir() / "sft" / "mixed_style.jsonl",
                                          max_length=80, replay_fraction=0.5, seed=seed),
                               tokenizer).train
        targets = find_target_modules(model, ["q_proj", "k_proj", "v_proj", "o_proj"])
        batch, max_length, pad = 8, 80, tokenizer.pad_token_id
    else:
        model, _ = benchmark_model("large", seed)
        g = torch.Generator().manual_seed(seed)
        examples = []
        for _ in range(64):
            ids = torch.randint(3, LARGE["vocab_size"], (256,), generator=g).tolist()
            examples.append({"input_ids": ids, "labels": [-100] * 85 + ids[85:]})
        targets = find_target_modules(model)
        batch, max_length, pad = 4, 256, 0
    torch.manual_seed(seed + 1)
    inject_lora(model, targets, r=16, alpha=32, dropout=0.0)
    cfg = TrainConfig(lr=2e-3, max_steps=steps, batch_size=batch, precision=precision,
                      save_every=10**6, seed=seed)
    return model.train(), examples, cfg, pad, max_length


def train_worker(args) -> dict:
    import torch

    from ftlab.train import Trainer, read_metrics
    from ftlab.train.metrics import flops_per_token

    torch.set_num_threads(args.threads)
    model, examples, cfg, pad, max_length = build(args.model, args.precision, args.steps)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, examples, cfg, folder, pad, max_length=max_length,
                          progress=False, print_fn=lines.append)
        trainer.fit()
        steps = [r for r in read_metrics(Path(folder) / "metrics.jsonl") if r["kind"] == "step"]
    seconds = [r["tokens"] / r["tokens_per_s"] for r in steps]
    tokens = [r["tokens"] for r in steps]
    return {"model": args.model, "precision": args.precision, "chosen": trainer.precision,
            "decision": next((line for line in lines if line.startswith("precision:")), ""),
            "steps": len(steps), "median_ms": 1e3 * statistics.median(seconds[1:]),
            "tokens_per_s": sum(tokens[1:]) / sum(seconds[1:]),
            "flops_per_token": flops_per_token(model), "final_loss": steps[-1]["loss"],
            "threads": torch.get_num_threads()}


def classify(name: str) -> str:
    lowered = name.lower()
    for category, keys in CATEGORIES.items():
        if any(key.lower() in lowered for key in keys):
            return category
    return "other ops"


def profile_worker(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ftlab.train import Trainer

    torch.set_num_threads(args.threads)
    warm = 3
    model, examples, cfg, pad, max_length = build(args.model, args.precision,
                                                  warm + args.profile_steps)
    marks: dict[str, float] = {}

    def on_record(record):
        if record["kind"] == "step" and record["step"] == warm:
            marks["start"] = time.perf_counter()
            prof.start()

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, examples, cfg, folder, pad, max_length=max_length,
                          progress=False, callbacks=[on_record], print_fn=lambda line: None)
        prof = profile(activities=[ProfilerActivity.CPU])
        trainer.fit()
        wall = time.perf_counter() - marks["start"]
        prof.stop()
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::") or "mkldnn" in event.key:
            category = classify(event.key)
            shares[category] = shares.get(category, 0.0) + event.self_cpu_time_total / 1e6
    top = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()
                  if e.key.startswith("aten::")), key=lambda t: -t[1])[:8]
    ops = sum(shares.values())
    return {"model": args.model, "precision": args.precision, "steps": args.profile_steps,
            "wall_s": wall, "ops_s": ops, "categories": shares,
            "overhead_s": max(wall - ops, 0.0), "top_ops": top}


def peaks(args) -> list[dict]:
    import torch

    from ftlab.train.metrics import matmul_peak_flops

    rows = []
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            for n in args.sizes:
                matmul_peak_flops.cache_clear()
                flops = matmul_peak_flops("cpu", dtype, n)
                rows.append({"threads": threads, "dtype": str(dtype).removeprefix("torch."),
                             "n": n, "gflops": flops / 1e9})
                log(f"peak {rows[-1]}")
    torch.set_num_threads(args.threads)
    return rows


def run_worker(args, kind: str, model: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, f"--{kind}-worker", "--model", model, "--precision",
           precision, "--threads", str(args.threads), "--steps",
           str(args.steps if model == "embedded" else args.large_steps),
           "--profile-steps", str(args.profile_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"worker {model}/{precision} failed:\n{out.stdout[-2000:]}\n"
                       f"{out.stderr[-4000:]}")


# ----------------------------------------------------------------------------- report

def summarise(runs: list[dict], peak: dict[str, float]) -> list[dict]:
    rows = []
    for model in MODELS:
        base = None
        for precision in PRECISIONS:
            mine = [r for r in runs if r["model"] == model and r["precision"] == precision]
            if not mine:
                continue
            ms = statistics.median(r["median_ms"] for r in mine)
            tps = statistics.median(r["tokens_per_s"] for r in mine)
            flops = mine[0]["flops_per_token"] * tps
            base = base or ms
            rows.append({"model": model, "precision": precision,
                         "chosen": sorted({r["chosen"] for r in mine}),
                         "median_ms": ms, "tokens_per_s": tps, "model_gflops": flops / 1e9,
                         "mfu_fp32_peak": flops / peak["float32"],
                         "mfu_bf16_peak": flops / peak["bfloat16"],
                         "speedup_vs_fp32": base / ms,
                         "final_loss": [r["final_loss"] for r in mine],
                         "decisions": [r["decision"] for r in mine]})
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    peak = report["peak_gflops"]
    out = [
        "# Training precision and the machine's limit: matmul peak, MFU, profile", "",
        f"{env['date']}, {env['cpu_count']} CPUs ({report['threads']} torch threads), Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}; "
        f"CPU flags: {', '.join(report['cpu_flags']) or 'none of interest'}. Produced by "
        f"`{report['command']}`.", "",
        "## Matmul peak (square n x n, best of 5 after a warm-up)", "",
        "| threads | dtype | " + " | ".join(f"n={n}" for n in report["sizes"]) + " |",
        "|---:|---|" + "---:|" * len(report["sizes"]),
    ]
    for threads in sorted({r["threads"] for r in report["peaks"]}):
        for dtype in ("float32", "bfloat16"):
            cells = [f"{r['gflops']:.0f}" for r in report["peaks"]
                     if r["threads"] == threads and r["dtype"] == dtype]
            out.append(f"| {threads} | {dtype} | " + " | ".join(cells) + " |")
    out += ["", f"GFLOP/s. Peak used below: float32 {peak['float32']:.0f}, bfloat16 "
            f"{peak['bfloat16']:.0f} GFLOP/s (the largest of each dtype).", "",
            "## Training: the Trainer in each precision", "",
            "| model | train.precision | ran in | median ms/step | real tok/s | model GFLOP/s "
            "| MFU vs fp32 peak | MFU vs bf16 peak | speed-up vs float32 |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["training"]:
        out.append(f"| {r['model']} | {r['precision']} | {'/'.join(r['chosen'])} | "
                   f"{r['median_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['model_gflops']:.1f} | "
                   f"{100 * r['mfu_fp32_peak']:.1f}% | {100 * r['mfu_bf16_peak']:.1f}% | "
                   f"**{r['speedup_vs_fp32']:.2f}** |")
    out += ["", "Median of the runs' median ms/step over steps 2..N; model FLOP/s = "
            "FLOPs/token (4N + 2N_trainable over the matmul weights) x real tokens/s. "
            "auto's decisions, as printed by the Trainer:", ""]
    for r in report["training"]:
        if r["precision"] == "auto":
            out += [f"- {r['model']}: " + "; ".join(sorted(set(r["decisions"])))]
    out += ["", "## Where a step's time goes (torch.profiler, self CPU time of aten ops)", "",
            "| model | precision | wall s | " + " | ".join(CATEGORIES) +
            " | other ops | overhead (Python, autograd, dispatch) |",
            "|---|---|---:|" + "---:|" * (len(CATEGORIES) + 2)]
    for p in report["profiles"]:
        cells = [f"{100 * p['categories'].get(c, 0) / p['wall_s']:.0f}%"
                 for c in (*CATEGORIES, "other ops")]
        out.append(f"| {p['model']} | {p['precision']} | {p['wall_s']:.2f} ({p['steps']} steps) "
                   f"| " + " | ".join(cells) + f" | {100 * p['overhead_s'] / p['wall_s']:.0f}% |")
    out += ["", "Top aten ops (self CPU s over the profiled steps):", ""]
    for p in report["profiles"]:
        out.append(f"- {p['model']} {p['precision']}: " + ", ".join(
            f"{name} {seconds:.2f} ({count})" for name, seconds, count in p["top_ops"][:6]))
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="steps per embedded-model run")
    p.add_argument("--large-steps", type=int, default=8, help="steps per large-model run")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[512, 1024, 2048, 4096])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, one repeat")
    p.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--precision", choices=PRECISIONS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.large_steps, args.profile_steps, args.repeats = 4, 3, 2, 1
        args.sizes = [256, 512]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    args.threads = args.threads or torch.get_num_threads()
    if args.train_worker or args.profile_worker:
        result = train_worker(args) if args.train_worker else profile_worker(args)
        print(MARK + json.dumps(result), flush=True)
        return 0
    from ftlab.hardware import cpu_flags

    peak_rows = peaks(args)
    peak = {d: max(r["gflops"] for r in peak_rows if r["dtype"] == d) * 1e9
            for d in ("float32", "bfloat16")}
    runs = []
    for i in range(args.repeats):
        order = [(m, p) for m in MODELS for p in PRECISIONS]
        for model, precision in (order if i % 2 == 0 else order[::-1]):
            runs.append(run_worker(args, "train", model, precision))
            log(f"train {model} {precision}: {runs[-1]['median_ms']:.1f} ms/step "
                f"({runs[-1]['chosen']})")
    profiles = []
    for model, precision in (("embedded", "float32"), ("large", "float32"),
                             ("large", "bfloat16")):
        profiles.append(run_worker(args, "profile", model, precision))
        log(f"profile {model} {precision}: {profiles[-1]['categories']}")
    report = {"environment": environment("transformers"), "threads": args.threads,
              "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                 "amx_tile"}),
              "command": "python benchmarks/bench_precision.py " + " ".join(argv or sys.argv[1:]),
              "sizes": args.sizes, "peaks": peak_rows,
              "peak_gflops": {d: v / 1e9 for d, v in peak.items()},
              "training": summarise(runs, peak), "runs": runs, "profiles": profiles}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "precision.md").write_text(markdown(report))
    log(f"wrote {args.out / 'precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
