"""Benchmark: one LoRA training step, ftlab's LoRA against PEFT's, on the same model and batch.

What is measured
----------------
One training step = forward (``model(input_ids=ids, labels=ids).loss``, causal-LM loss) +
``loss.backward()`` + ``torch.optim.AdamW.step()`` over the trainable parameters +
``zero_grad(set_to_none=True)``, in float32 on the CPU, model in train mode (LoRA dropout
active).

* **ours**: ``ftlab.lora.inject_lora(model, find_target_modules(model), r, alpha, dropout)``.
* **PEFT**: ``peft.get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha,
  lora_dropout=dropout, target_modules=<the same full module names>))``.

Both adapt the same modules (all seven projections of every Llama layer: q/k/v/o, gate/up/down),
with the same rank, alpha and dropout (defaults r=16, alpha=32, dropout 0.05). PEFT's ``lora_A``
is overwritten with ours, so both start from identical weights (``lora_B`` is zero in both). Each
step re-seeds the RNG with the same seed for both, so both draw the same dropout masks; the
script records the largest difference between the two losses over all steps as a check that
both really compute the same thing. The trainable parameter counts are printed and must be
equal (the script exits with status 1 otherwise).

Two models:

* **small**: the embedded 4.6M-parameter Llama (``ftlab.models.load_base_model``), batch
  8 x 256 random token ids (seeded), ``--steps`` timed steps (default 30).
* **large**: a randomly initialised ``LlamaConfig`` of about 50M parameters (default hidden
  768, 8 layers, 12 heads, 4 KV heads, intermediate 2048, vocab 1658, tied embeddings), batch
  4 x 256, ``--large-steps`` timed steps (default 10), to see how the comparison scales. (A
  hidden-512, 8-layer shape has only ~23M parameters, hence the wider default; every dimension is
  a flag.)

How: time
---------
Both variants live in the same process (two copies of the model, loaded or built with the same
seed). After 3 warm-up steps of each, ``N`` timed steps of each run interleaved in pairs whose
order alternates (ours-PEFT, PEFT-ours, ...) so that machine noise and any order effect hit both
alike. ``time.perf_counter`` brackets exactly one step; ``gc.collect()`` runs before each step,
outside the timer. Reported: median ms/step (with the 25th/75th percentiles), the ratio of the
medians ``ours / PEFT`` (< 1: ours is faster) and, as a noise-robust cross-check, the median of
the per-pair ratios. A wall-clock budget (``--budget-s``) can lower the number of timed steps of
a model (never below 5); the steps actually run are reported.

How: memory
-----------
Peak resident memory (RSS) of the training steps, each variant in a **fresh subprocess** (this
script with ``--memory-worker``), so allocator state, caches and the other variant cannot leak
into the number. The worker loads/builds the model, injects the adapters, creates the optimizer
and the batch, runs ``gc.collect()`` and glibc's ``malloc_trim(0)`` (so free heap is not counted
in the baseline and then silently reused), then resets the kernel's RSS high-water mark (writes
``5`` to ``/proc/self/clear_refs``) and reads the current RSS as the baseline; it then runs
``--memory-steps`` steps (default 3; Adam's states are allocated in the first) and reads the
high-water mark ``VmHWM`` from ``/proc/self/status``. Both workers do exactly the same setup
(PEFT's A is not replaced by ours there: its values do not change memory). Each variant runs in
``--memory-repeats`` subprocesses (default 2, alternating ours/PEFT). Reported: the median
``peak - baseline`` in MB (MiB, 2**20 bytes) and the ratio ours / PEFT. Resetting the high-water
mark (rather than using ``ru_maxrss`` directly) keeps a transient peak during model loading from
hiding the step's peak; ``ru_maxrss`` is recorded too. RSS counts what the allocator holds, so
the peak is an upper bound on live tensors (it may include free memory glibc keeps during the
steps, alike for both variants).

As an allocator-independent complement, the in-process run also sums the bytes of the distinct
tensors autograd saves for backward during one forward pass (``saved_tensors_hooks``,
deduplicated by storage, parameters excluded): the activation memory each implementation keeps.

Results go to ``<out>/lora_step.json`` and ``<out>/lora_step.md``.

Run: ``.venv/bin/python benchmarks/bench_lora_step.py [--steps 30] [--rank 16]
[--out benchmarks/results]``. Ratios, never wall-clock limits, are the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _env import ROOT, environment  # noqa: E402
VARIANTS = ("ours", "peft")
MB = 2**20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- models

def model_spec(args, which: str) -> dict:
    if which == "small":
        return {"name": "small", "source": "embedded base model (ftlab.models.load_base_model)",
                "batch": args.batch, "seq_len": args.seq_len}
    return {"name": "large", "source": "random-init LlamaConfig",
            "config": {"hidden_size": args.large_hidden, "num_hidden_layers": args.large_layers,
                       "num_attention_heads": args.large_heads,
                       "num_key_value_heads": args.large_kv_heads,
                       "intermediate_size": args.large_intermediate,
                       "vocab_size": args.large_vocab, "max_position_embeddings": 512,
                       "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
            "batch": args.large_batch, "seq_len": args.seq_len}


def build_base(spec: dict, seed: int):
    """A fresh float32 model for ``spec``; the same weights every call (seeded)."""
    import torch

    torch.manual_seed(seed)
    if spec["name"] == "small":
        from ftlab.models import load_base_model

        model, _ = load_base_model()
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**spec["config"])).float()
    return model


def make_variant(spec: dict, variant: str, rank: int, alpha: float, dropout: float, seed: int,
                 same_a: bool = True):
    """(model, targets): ``variant`` LoRA injected into a fresh copy of the base model.

    Ours draws its A matrices in ``inject_lora`` after seeding with ``seed + 1``; for PEFT the
    same draw is repeated on a throwaway copy of the base model and copied into PEFT's
    ``lora_A``, so both variants start from identical adapter weights. ``same_a=False`` skips
    that (memory workers: the values of A do not change memory, and the throwaway copy would
    leave freed heap behind in the PEFT process only).
    """
    import torch

    from ftlab.lora import find_target_modules, inject_lora, lora_layers

    model = build_base(spec, seed)
    targets = find_target_modules(model)
    torch.manual_seed(seed + 1)
    if variant == "ours":
        inject_lora(model, targets, r=rank, alpha=alpha, dropout=dropout)
    elif not same_a:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                 target_modules=list(targets)))
    else:
        from peft import LoraConfig, get_peft_model

        # Reference A matrices: exactly what ``inject_lora`` draws with the same seed.
        ref = build_base(spec, seed)
        torch.manual_seed(seed + 1)
        inject_lora(ref, targets, r=rank, alpha=alpha, dropout=dropout)
        ref_a = {n: m.lora_A.detach().clone() for n, m in lora_layers(ref).items()}
        del ref
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                 target_modules=list(targets)))
        with torch.no_grad():
            for name, a in ref_a.items():
                model.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(a)
    model.train()
    return model, targets


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def make_batch(spec: dict, vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (spec["batch"], spec["seq_len"]), generator=g)


def make_optimizer(model, lr: float):
    import torch

    return torch.optim.AdamW(trainable(model), lr=lr)


def train_step(model, optimizer, ids, step_seed: int) -> float:
    import torch

    torch.manual_seed(step_seed)        # same dropout masks for both variants
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def saved_for_backward_bytes(model, ids, step_seed: int) -> int:
    """Bytes of distinct non-parameter tensors autograd saves during one forward pass."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in params and ptr != 0:
                seen[ptr] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    torch.manual_seed(step_seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    return sum(seen.values())


# ----------------------------------------------------------------------------- memory worker

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(args) -> int:
    """Run in a fresh process: RSS high-water mark of ``--memory-steps`` steps, as JSON."""
    import torch

    import peft  # noqa: F401 - both variants import the same libraries
    import transformers

    transformers.logging.set_verbosity_error()
    spec = model_spec(args, args.worker_model)
    model, _ = make_variant(spec, args.memory_worker, args.rank, args.alpha, args.dropout,
                            args.seed, same_a=False)
    optimizer = make_optimizer(model, args.lr)
    ids = make_batch(spec, model.config.vocab_size, args.seed)
    gc.collect()
    trimmed = False
    try:  # hand glibc's free heap back to the OS so the baseline RSS is live memory
        import ctypes

        trimmed = bool(ctypes.CDLL("libc.so.6").malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        pass
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        reset = False
    baseline_kb = _status_kb("VmRSS")
    hwm_before_kb = _status_kb("VmHWM")
    losses = [train_step(model, optimizer, ids, args.seed + 1000 + i)
              for i in range(args.memory_steps)]
    peak_kb = _status_kb("VmHWM")
    after_kb = _status_kb("VmRSS")
    print(json.dumps({
        "variant": args.memory_worker, "model": args.worker_model,
        "hwm_reset": reset, "malloc_trim": trimmed, "hwm_after_reset_kb": hwm_before_kb,
        "baseline_rss_kb": baseline_kb, "peak_rss_kb": peak_kb, "rss_after_steps_kb": after_kb,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_minus_baseline_mb": (peak_kb - baseline_kb) / 1024,
        "steps": args.memory_steps, "losses": losses, "threads": torch.get_num_threads(),
    }))
    return 0


def run_memory(args, which: str, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", variant,
           "--worker-model", which]
    for flag in ("rank", "alpha", "dropout", "seed", "lr", "memory_steps", "batch",
                 "large_batch", "seq_len", "large_hidden", "large_layers", "large_heads",
                 "large_kv_heads", "large_intermediate", "large_vocab"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {variant}/{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- timing

def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_model(args, which: str, steps: int, deadline: float) -> dict:
    spec = model_spec(args, which)
    log(f"[{which}] building both variants ...")
    models, opts, targets = {}, {}, {}
    for v in VARIANTS:
        models[v], targets[v] = make_variant(spec, v, args.rank, args.alpha, args.dropout,
                                             args.seed)
        opts[v] = make_optimizer(models[v], args.lr)
    base_params = sum(p.numel() for n, p in models["ours"].named_parameters()
                      if "lora_" not in n)
    counts = {v: sum(p.numel() for p in trainable(models[v])) for v in VARIANTS}
    adapters = {"ours": sum(1 for m in models["ours"].modules()
                            if type(m).__name__ == "LoRALinear"),
                "peft": sum(1 for m in models["peft"].modules()
                            if type(m).__module__.startswith("peft.tuners.lora")
                            and type(m).__name__ == "Linear")}
    vocab = models["ours"].config.vocab_size
    ids = make_batch(spec, vocab, args.seed)
    log(f"[{which}] base parameters {base_params:,}; trainable ours {counts['ours']:,}, "
        f"PEFT {counts['peft']:,}{'' if counts['ours'] == counts['peft'] else '  <-- DIFFERENT'}"
        f"; adapted modules ours {adapters['ours']}, PEFT {adapters['peft']}; batch "
        f"{tuple(ids.shape)}")

    losses = {v: [] for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    step_seed = args.seed + 1000

    def one(v: str, seed: int, record: bool) -> float:
        gc.collect()
        t0 = time.perf_counter()
        loss = train_step(models[v], opts[v], ids, seed)
        dt = time.perf_counter() - t0
        losses[v].append(loss)
        if record:
            times[v].append(dt)
        return dt

    log(f"[{which}] warm-up: {args.warmup} steps each, interleaved")
    warm = []
    for i in range(args.warmup):
        warm.append(one("ours", step_seed + i, False) + one("peft", step_seed + i, False))
    pair_s = warm[-1]
    remaining = deadline - time.perf_counter()
    fit = int(remaining // pair_s) if pair_s > 0 else steps
    planned = steps
    if fit < steps:
        steps = max(5, fit)
        log(f"[{which}] budget: {remaining:.0f} s left, ~{pair_s:.2f} s per pair -> "
            f"{steps} timed steps instead of {planned}")
    log(f"[{which}] timing {steps} steps each, pairs in alternating order "
        f"(~{pair_s * steps:.0f} s)")
    pair_ratios = []
    for i in range(steps):
        seed = step_seed + args.warmup + i
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        dts = {v: one(v, seed, True) for v in order}
        pair_ratios.append(dts["ours"] / dts["peft"])
    loss_diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["peft"]))

    saved = {v: saved_for_backward_bytes(models[v], ids, step_seed) for v in VARIANTS}
    for v in VARIANTS:
        opts[v].zero_grad(set_to_none=True)

    def summary(v: str) -> dict:
        ms = [t * 1000 for t in times[v]]
        return {"median_ms": statistics.median(ms), "p25_ms": pct(ms, 0.25),
                "p75_ms": pct(ms, 0.75), "min_ms": min(ms), "max_ms": max(ms),
                "all_ms": [round(x, 2) for x in ms],
                "trainable_params": counts[v], "adapted_modules": adapters[v],
                "saved_for_backward_mb": saved[v] / MB,
                "final_loss": losses[v][-1]}

    result = {
        "model": which, "spec": spec, "base_params": base_params,
        "num_targets": len(targets["ours"]),
        "target_suffixes": sorted({t.rsplit(".", 1)[-1] for t in targets["ours"]}),
        "batch_shape": list(ids.shape), "tokens_per_step": int(ids.numel()),
        "warmup_steps": args.warmup, "timed_steps": steps, "planned_steps": planned,
        "ours": summary("ours"), "peft": summary("peft"),
        "trainable_equal": counts["ours"] == counts["peft"],
        "max_abs_loss_diff": loss_diff,
        "ratio_time_medians": statistics.median(times["ours"]) / statistics.median(times["peft"]),
        "ratio_time_pairwise_median": statistics.median(pair_ratios),
        "ratio_saved_for_backward": saved["ours"] / saved["peft"] if saved["peft"] else None,
    }
    log(f"[{which}] ours {result['ours']['median_ms']:.1f} ms/step, PEFT "
        f"{result['peft']['median_ms']:.1f} ms/step, ratio {result['ratio_time_medians']:.3f} "
        f"(pairwise median {result['ratio_time_pairwise_median']:.3f}); max |loss diff| "
        f"{loss_diff:.2e}; saved for backward ours {saved['ours'] / MB:.1f} MB, PEFT "
        f"{saved['peft'] / MB:.1f} MB")
    return result


# ----------------------------------------------------------------------------- report

def markdown(report: dict) -> str:
    env, st = report["environment"], report["settings"]
    lines = [
        "# LoRA training step: ftlab `inject_lora` vs PEFT `get_peft_model`",
        "",
        f"{env['date']}, {env['cpu_count']} CPUs ({env['torch_threads']} torch threads), "
        f"Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"PEFT {env['peft']}. r={st['rank']}, alpha={st['alpha']}, dropout {st['dropout']}, "
        "all 7 projections of every layer, float32, AdamW over the LoRA parameters. Produced by "
        "`benchmarks/bench_lora_step.py`.",
        "",
        "| model | base params | batch | trainable ours | trainable PEFT | ours ms/step | "
        "PEFT ms/step | time ratio (ours/PEFT) | ours peak MB | PEFT peak MB | "
        "memory ratio (ours/PEFT) | saved for backward ours / PEFT MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        o, p, m = r["ours"], r["peft"], r["memory"]
        lines.append(
            f"| {r['model']} | {r['base_params'] / 1e6:.1f}M | "
            f"{r['batch_shape'][0]} x {r['batch_shape'][1]} | {o['trainable_params']:,} | "
            f"{p['trainable_params']:,} | {o['median_ms']:.1f} "
            f"({o['p25_ms']:.1f}-{o['p75_ms']:.1f}) | {p['median_ms']:.1f} "
            f"({p['p25_ms']:.1f}-{p['p75_ms']:.1f}) | **{r['ratio_time_medians']:.3f}** | "
            f"{m['ours']['peak_minus_baseline_mb']:.1f} | "
            f"{m['peft']['peak_minus_baseline_mb']:.1f} | **{m['ratio']:.3f}** | "
            f"{o['saved_for_backward_mb']:.1f} / {p['saved_for_backward_mb']:.1f} |")
    lines += [
        "",
        "Time: median of the timed steps (25th-75th percentile in brackets) after "
        f"{st['warmup']} warm-up steps each, ours and PEFT interleaved in pairs of alternating "
        "order in one process. Memory: peak RSS during "
        f"{st['memory_steps']} steps minus the RSS just before them (after `gc.collect()` and "
        "`malloc_trim(0)`, kernel high-water mark reset), each variant in a fresh subprocess, "
        f"median of {st['memory_repeats']} subprocesses per variant. Saved for backward: distinct "
        "non-parameter tensors autograd keeps for backward in one forward pass.",
        "",
    ]
    for r in report["results"]:
        cut = ("" if r["timed_steps"] == r["planned_steps"]
               else f" (cut by the budget; planned {r['planned_steps']})")
        lines.append(
            f"- {r['model']}: {r['timed_steps']} timed steps each{cut}"
            f"; median of per-pair ratios {r['ratio_time_pairwise_median']:.3f}; "
            f"{r['num_targets']} adapted modules ({', '.join(r['target_suffixes'])}); trainable "
            f"counts {'equal' if r['trainable_equal'] else 'DIFFERENT'}; largest |loss ours - "
            f"loss PEFT| over all steps {r['max_abs_loss_diff']:.2e}"
            + ("" if "all_mb" not in r["memory"]["ours"] else
               f"; memory runs ours {r['memory']['ours']['all_mb']} MB, PEFT "
               f"{r['memory']['peft']['all_mb']} MB") + ".")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30,
                   help="timed steps per variant on the small model (default: %(default)s)")
    p.add_argument("--large-steps", type=int, default=10,
                   help="timed steps per variant on the large model; 0 skips it "
                        "(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="small-model batch size")
    p.add_argument("--large-batch", type=int, default=4, help="large-model batch size")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--large-hidden", type=int, default=768)
    p.add_argument("--large-layers", type=int, default=8)
    p.add_argument("--large-heads", type=int, default=12)
    p.add_argument("--large-kv-heads", type=int, default=4)
    p.add_argument("--large-intermediate", type=int, default=2048)
    p.add_argument("--large-vocab", type=int, default=1658)
    p.add_argument("--memory-steps", type=int, default=3,
                   help="steps per memory subprocess (default: %(default)s)")
    p.add_argument("--memory-repeats", type=int, default=2,
                   help="fresh subprocesses per variant and model, alternating ours/PEFT; the "
                        "median is reported (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="wall-clock budget for the whole run; timed steps of a model are "
                        "reduced (not below 5) to fit (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder for lora_step.json and lora_step.md (default: %(default)s)")
    p.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--worker-model", choices=("small", "large"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.memory_worker:
        return memory_worker(args)
    start = time.perf_counter()
    deadline = start + args.budget_s

    log("importing torch / transformers / peft ...")
    import transformers

    transformers.logging.set_verbosity_error()
    import peft  # noqa: F401

    models = [("small", args.steps)] + ([("large", args.large_steps)] if args.large_steps else [])
    report = {"environment": environment("transformers", "peft"),
              "settings": {"rank": args.rank, "alpha": args.alpha, "dropout": args.dropout,
                           "lr": args.lr, "seed": args.seed, "warmup": args.warmup,
                           "steps": args.steps, "large_steps": args.large_steps,
                           "memory_steps": args.memory_steps,
                           "memory_repeats": args.memory_repeats, "budget_s": args.budget_s,
                           "models": {w: model_spec(args, w) for w, _ in models}},
              "results": []}
    # Memory subprocesses (a few steps each) take roughly this share of the budget; reserve it.
    reserve = 0.0 if args.no_memory else 0.3 * args.budget_s
    for index, (which, steps) in enumerate(models):
        # Share what is left of the timing budget between the models still to run, weighted
        # towards the larger (later) one.
        left = deadline - reserve - time.perf_counter()
        share = left * (0.35 if index == 0 and len(models) > 1 else 1.0)
        report["results"].append(time_model(args, which, steps, time.perf_counter() + share))

    ok = all(r["trainable_equal"] for r in report["results"])
    for r in report["results"]:
        if args.no_memory:
            r["memory"] = {v: {"peak_minus_baseline_mb": float("nan")} for v in VARIANTS}
            r["memory"]["ratio"] = float("nan")
            continue
        runs = {v: [] for v in VARIANTS}
        for k in range(args.memory_repeats):
            for v in VARIANTS:
                log(f"[{r['model']}] memory {k + 1}/{args.memory_repeats}: fresh subprocess for "
                    f"{v}, {args.memory_steps} steps")
                out = run_memory(args, r["model"], v)
                runs[v].append(out)
                log(f"[{r['model']}] memory {v}: peak - baseline "
                    f"{out['peak_minus_baseline_mb']:.1f} MB (baseline "
                    f"{out['baseline_rss_kb'] / 1024:.0f} MB, HWM reset {out['hwm_reset']}, "
                    f"malloc_trim {out['malloc_trim']})")
        mem = {}
        for v in VARIANTS:
            values = [o["peak_minus_baseline_mb"] for o in runs[v]]
            mem[v] = {"peak_minus_baseline_mb": statistics.median(values),
                      "all_mb": [round(x, 1) for x in values], "runs": runs[v]}
        mem["ratio"] = (mem["ours"]["peak_minus_baseline_mb"]
                        / mem["peft"]["peak_minus_baseline_mb"])
        r["memory"] = mem

    report["wall_s"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_step.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (args.out / "lora_step.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'lora_step.json'} and {args.out / 'lora_step.md'} "
        f"({report['wall_s']} s)")
    if not ok:
        log("trainable parameter counts differ between ours and PEFT")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
