"""Benchmark: tokenizing and labelling chat conversations, ftlab against TRL's SFT preparation.

What is measured
----------------
Turning conversations (lists of ``{"role", "content"}`` messages) into training examples:
token ids plus labels in which every token the assistant does not produce is ``-100``.

* **ours**: ``ftlab.data.tokenize_with_labels(conversation, tokenizer, max_length)`` called once
  per conversation in a plain Python loop (one process), output kept as a list of dicts.
* **TRL**: the dataset preparation that ``trl.SFTTrainer`` runs in its constructor, with
  ``SFTConfig(assistant_only_loss=True, max_length=...)`` and ``dataset_num_proc`` unset (one
  process), on a ``datasets.Dataset`` with a ``"messages"`` column. We construct one
  ``SFTTrainer`` (embedded base model, embedded tokenizer) and then call its
  ``_prepare_dataset`` method directly: this is exactly what the constructor calls for the
  train set (tokenize with ``return_assistant_tokens_mask``, build labels, truncate, drop
  fully masked rows), without the rest of the constructor. The script checks once, on the
  embedded set, that the constructor's ``train_dataset`` equals what the direct call returns.
  Building the input ``Dataset`` from Python lists is not timed (it is the input format TRL
  asks for); its time is reported separately.

Both use tokenizers loaded from the same embedded folder (``ftlab.models``), the same
``max_length`` and exactly the same conversations. ``datasets`` caching is disabled
(``datasets.disable_caching()``) and the input datasets live in memory, so each TRL run
recomputes everything; ``datasets``' own progress bars are turned off.

Data
----
The embedded SFT set (``data/sft/messages.jsonl``, 378 conversations) and synthetic scale-ups:
records are cycled; copy ``k`` of the set (``k >= 1``) changes every user turn, adding ``k`` to
each integer in it or, when it has none, appending `` (#k)``, so no two conversations of a
scale-up are identical and token counts vary a little.

How
---
``time.perf_counter`` around each run, after ``gc.collect()``. One warm-up (a tiny run of
ours, and the ``SFTTrainer`` construction on the embedded set for TRL) before any timing. At
sizes up to ``--repeat-max-size`` each side runs ``--repeats`` times, alternating ours and TRL,
and the best time is kept; larger sizes run once. A wall-clock budget (``--budget-s``) guards
the run: a size whose time, extrapolated linearly from the previous size, would not fit is
skipped and reported as such. At every size the script checks that both sides produce the same
total and trained token counts and the same examples (untimed). Optionally (``--profile N``)
ours is profiled with cProfile on the first N conversations of a scale-up, to show where its
time goes (cProfile slows Python-heavy code more than native code; read it as proportions).

Results go to ``<out>/data_prep.json`` and ``<out>/data_prep.md``.

Run: ``.venv/bin/python benchmarks/bench_data_prep.py [--sizes 378,10000,100000]
[--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _env import ROOT, environment  # noqa: E402

from ftlab.paths import shown  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "sft" / "messages.jsonl"
IGNORE = -100
_NUMBER = re.compile(r"\d+")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- data

def load_base_set(path: Path) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def _vary(text: str, k: int) -> str:
    if _NUMBER.search(text):
        return _NUMBER.sub(lambda m: str(int(m.group()) + k), text)
    return f"{text} (#{k})"


def scale_up(base: list[list[dict]], n: int) -> list[list[dict]]:
    """``n`` conversations: ``base`` cycled; copy ``k >= 1`` has every user turn varied by ``k``."""
    out = []
    for i in range(n):
        k, conversation = divmod(i, len(base))[0], base[i % len(base)]
        if k == 0:
            out.append([dict(m) for m in conversation])
        else:
            out.append([
                {**m, "content": _vary(m["content"], k)} if m["role"] == "user" else dict(m)
                for m in conversation
            ])
    return out


# ----------------------------------------------------------------------------- runners

def run_ours(conversations, tokenizer, max_length):
    from ftlab.data import tokenize_with_labels

    gc.collect()
    t0 = time.perf_counter()
    out = [tokenize_with_labels(c, tokenizer, max_length=max_length) for c in conversations]
    return time.perf_counter() - t0, out


def run_trl(dataset, trainer):
    gc.collect()
    t0 = time.perf_counter()
    prepared = trainer._prepare_dataset(
        dataset, trainer.processing_class, trainer.args, False, None, "train")
    return time.perf_counter() - t0, prepared


def counts_ours(out) -> tuple[int, int, int]:
    total = sum(len(e["input_ids"]) for e in out)
    trained = sum(sum(1 for x in e["labels"] if x != IGNORE) for e in out)
    longest = max((len(e["input_ids"]) for e in out), default=0)
    return total, trained, longest


def counts_trl(prepared) -> tuple[int, int, int]:
    import pyarrow.compute as pc

    ids = prepared.data.column("input_ids")
    labels = prepared.data.column("labels")
    total = pc.sum(pc.list_value_length(ids)).as_py() or 0
    trained = pc.sum(pc.not_equal(pc.list_flatten(labels), IGNORE)).as_py() or 0
    longest = pc.max(pc.list_value_length(ids)).as_py() or 0
    return total, trained, longest


def identical_examples(out, prepared) -> int:
    ids = prepared.data.column("input_ids").to_pylist()
    labels = prepared.data.column("labels").to_pylist()
    return sum(1 for e, a, b in zip(out, ids, labels) if e["input_ids"] == a and e["labels"] == b)


def make_dataset(conversations):
    from datasets import Dataset

    t0 = time.perf_counter()
    ds = Dataset.from_list([{"messages": c} for c in conversations])
    return time.perf_counter() - t0, ds


def build_trainer(train_dataset, output_dir: str, max_length: int):
    from trl import SFTConfig, SFTTrainer

    from ftlab.models import load_base_model

    model, trl_tokenizer = load_base_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = SFTConfig(
            output_dir=output_dir,
            assistant_only_loss=True,
            max_length=max_length,
            dataset_num_proc=None,   # one process, as ours
            report_to="none",
            bf16=False,
            use_cpu=True,
        )
        t0 = time.perf_counter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset,
                             processing_class=trl_tokenizer)
    return time.perf_counter() - t0, trainer


# ----------------------------------------------------------------------------- profile

def profile_ours(conversations, tokenizer, max_length, top: int = 12) -> dict:
    from ftlab.data import tokenize_with_labels

    for c in conversations[:16]:
        tokenize_with_labels(c, tokenizer, max_length=max_length)
    profiler = cProfile.Profile()
    profiler.enable()
    for c in conversations:
        tokenize_with_labels(c, tokenizer, max_length=max_length)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw = stats.stats  # (file, line, func) -> (cc, nc, tt, ct, callers)
    total = stats.total_tt

    def cum(file_suffix: str, func: str) -> float:
        return sum(v[3] for (f, _, fn), v in raw.items()
                   if fn == func and f.replace("\\", "/").endswith(file_suffix))

    def tot(name_part: str) -> float:  # built-in methods are keyed "<method 'x' of 'T' objects>"
        return sum(v[2] for (_, _, fn), v in raw.items() if name_part in fn)

    parts = {
        "total (profiled)": total,
        "render (chat template, jinja), all calls": cum("ftlab/data/chat.py", "render"),
        "  of which assistant_spans (prefix renders)":
            cum("ftlab/data/labels.py", "assistant_spans"),
        "tokenizer __call__ (text -> ids + offsets)": cum("tokenization_utils_base.py", "__call__"),
        "  of which Rust encode_batch": tot("'encode_batch'"),
        "label list comprehension (offsets vs spans)": cum("ftlab/data/labels.py", "<listcomp>"),
    }
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_tottime = [{"function": f"{Path(f).name}:{line}({fn})", "calls": v[1],
                   "tottime_s": round(v[2], 4), "cumtime_s": round(v[3], 4)}
                  for (f, line, fn), v in rows]
    return {
        "conversations": len(conversations),
        "seconds": {k: round(v, 4) for k, v in parts.items()},
        "share_of_total": {k: round(v / total, 3) if total else None for k, v in parts.items()},
        "top_by_tottime": by_tottime,
    }


# ----------------------------------------------------------------------------- report

def markdown(report: dict) -> str:
    lines = [
        "# Data preparation: ftlab `tokenize_with_labels` vs TRL `SFTTrainer` preparation",
        "",
        f"{report['environment']['date']}, {report['environment']['cpu_count']} CPUs, "
        f"Python {report['environment']['python']}, TRL {report['environment']['trl']}, "
        f"transformers {report['environment']['transformers']}, "
        f"datasets {report['environment']['datasets']}; one process each, "
        f"max_length={report['settings']['max_length']}, datasets caching off. "
        "Produced by `benchmarks/bench_data_prep.py`.",
        "",
        "| conversations | total tokens | trained tokens | ours s | ours tok/s | TRL s | "
        "TRL tok/s | ratio (ours/TRL throughput) | ours s/1k conv | TRL s/1k conv | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['conversations']:,} | {r['total_tokens']:,} | {r['trained_tokens_ours']:,} | "
            f"{r['ours']['seconds']:.3f} | {r['ours']['tokens_per_s']:,.0f} | "
            f"{r['trl']['seconds']:.3f} | {r['trl']['tokens_per_s']:,.0f} | "
            f"**{r['ratio_throughput']:.2f}x** | {r['ours']['s_per_1k_conversations']:.3f} | "
            f"{r['trl']['s_per_1k_conversations']:.3f} | best of {r['runs']} |")
    lines.append("")
    for s in report["skipped"]:
        lines.append(f"- Size {s['conversations']:,} skipped: {s['reason']}")
    if report["skipped"]:
        lines.append("")
    chk = report.get("check_embedded_set")
    if chk:
        lines += [
            f"Check on the embedded set ({chk['conversations']} conversations): trained tokens "
            f"ours {chk['trained_tokens_ours']:,}, TRL {chk['trained_tokens_trl']:,} "
            f"({'same' if chk['trained_tokens_equal'] else 'DIFFERENT'}); total tokens ours "
            f"{chk['total_tokens_ours']:,}, TRL {chk['total_tokens_trl']:,}; identical examples "
            f"(ids and labels) {chk['identical_examples']}/{chk['conversations']}; "
            f"SFTTrainer constructor's train_dataset equals the direct `_prepare_dataset` call: "
            f"{chk['constructor_matches_direct_call']}.",
            "",
        ]
    mismatched = [r["conversations"] for r in report["results"] if not r["outputs_match"]]
    lines.append("Outputs (ids and labels of every example) match at every size."
                 if not mismatched else f"Outputs differ at sizes: {mismatched}.")
    lines.append("")
    lines.append("TRL time excludes building its input `Dataset` from Python lists: "
                 + ", ".join(f"{r['conversations']:,}: {r['trl_input_dataset_build_s']:.3f} s"
                             for r in report["results"]) + ".")
    prof = report.get("profile_ours")
    if prof:
        lines += ["", f"cProfile of ours on {prof['conversations']:,} conversations "
                  "(shares of profiled time; overlapping, cumulative):", ""]
        for k, v in prof["seconds"].items():
            share = prof["share_of_total"][k] or 0.0
            bullet = "  - " if k.startswith("  ") else "- "
            lines.append(f"{bullet}{k.strip()}: {v:.3f} s ({share:.0%})")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="378,10000,100000",
                   help="comma-separated numbers of conversations (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder for data_prep.json and data_prep.md (default: %(default)s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SFT messages JSONL")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per side at sizes <= --repeat-max-size; best is kept")
    p.add_argument("--repeat-max-size", type=int, default=10_000)
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="wall-clock budget for the timed sizes; a size predicted not to fit "
                        "is skipped (default: %(default)s)")
    p.add_argument("--profile", type=int, default=2000,
                   help="cProfile ours on this many conversations (0: off)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    start = time.perf_counter()

    log("importing datasets / transformers / trl ...")
    import datasets

    datasets.disable_caching()
    datasets.disable_progress_bars()
    import transformers
    transformers.logging.set_verbosity_error()

    from ftlab.models import load_tokenizer

    tokenizer = load_tokenizer()
    base = load_base_set(args.data)
    log(f"embedded set: {len(base)} conversations from {args.data}")

    report = {"environment": environment("trl", "transformers", "datasets", "tokenizers"),
              "settings": {"sizes": sizes, "max_length": args.max_length,
                           "repeats": args.repeats, "repeat_max_size": args.repeat_max_size,
                           "budget_s": args.budget_s, "data": shown(args.data),
                           "trl_call": "SFTTrainer._prepare_dataset(dataset, tokenizer, args, "
                                       "packing=False, formatting_func=None, 'train')",
                           "trl_config": {"assistant_only_loss": True,
                                          "max_length": args.max_length,
                                          "dataset_num_proc": None, "packing": False}},
              "results": [], "skipped": []}

    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        # Warm-up, and the check on the embedded set.
        log("warm-up: ours on 32 conversations; SFTTrainer construction on the embedded set")
        run_ours(base[:32], tokenizer, args.max_length)
        _, base_ds = make_dataset(base)
        ctor_s, trainer = build_trainer(base_ds, tmp, args.max_length)
        _, direct = run_trl(base_ds, trainer)
        ctor_ds = trainer.train_dataset
        _, ours_base = run_ours(base, tokenizer, args.max_length)
        o_total, o_trained, _ = counts_ours(ours_base)
        t_total, t_trained, _ = counts_trl(direct)
        check = {
            "conversations": len(base),
            "trained_tokens_ours": o_trained, "trained_tokens_trl": t_trained,
            "trained_tokens_equal": o_trained == t_trained,
            "total_tokens_ours": o_total, "total_tokens_trl": t_total,
            "identical_examples": identical_examples(ours_base, direct),
            "constructor_matches_direct_call": (
                ctor_ds.num_rows == direct.num_rows
                and ctor_ds.data.column("input_ids").equals(direct.data.column("input_ids"))
                and ctor_ds.data.column("labels").equals(direct.data.column("labels"))),
            "trl_constructor_s_incl_preparation": round(ctor_s, 4),
        }
        report["check_embedded_set"] = check
        log(f"check (embedded set): trained tokens ours={o_trained} TRL={t_trained}"
            f"{'' if o_trained == t_trained else '  <-- DIFFERENT'}; total tokens ours={o_total} "
            f"TRL={t_total}; identical examples {check['identical_examples']}/{len(base)}; "
            f"constructor == direct call: {check['constructor_matches_direct_call']}")
        del ours_base, direct, ctor_ds

        budget_start = time.perf_counter()
        rate = None  # seconds per conversation, both sides and all runs, from the last size
        for index, n in enumerate(sizes):
            runs = args.repeats if n <= args.repeat_max_size else 1
            elapsed = time.perf_counter() - budget_start
            if rate is not None:
                predicted = rate * n * runs
                if elapsed + predicted > args.budget_s:
                    for m in sizes[index:]:
                        report["skipped"].append({
                            "conversations": m,
                            "reason": f"predicted {rate * m * runs:.0f} s for ours+TRL "
                                      f"({runs} run(s)) with {elapsed:.0f} s of the "
                                      f"{args.budget_s:.0f} s budget used"})
                    log(f"skipping sizes {sizes[index:]}: would not fit the budget")
                    break
            log(f"size {n:,}: building data")
            size_t0 = time.perf_counter()
            conversations = scale_up(base, n)
            build_s, ds = make_dataset(conversations)
            all_runs = {"ours": [], "trl": []}
            for r in range(runs):
                ours_out = prepared = None
                gc.collect()
                s, ours_out = run_ours(conversations, tokenizer, args.max_length)
                all_runs["ours"].append(s)
                log(f"size {n:,} run {r + 1}/{runs}: ours {s:.3f} s")
                s, prepared = run_trl(ds, trainer)
                all_runs["trl"].append(s)
                log(f"size {n:,} run {r + 1}/{runs}: TRL  {s:.3f} s")
            best = {k: min(v) for k, v in all_runs.items()}
            o_total, o_trained, o_longest = counts_ours(ours_out)
            t_total, t_trained, t_longest = counts_trl(prepared)
            same = identical_examples(ours_out, prepared)
            result = {
                "conversations": n,
                "total_tokens": o_total,
                "total_tokens_trl": t_total,
                "trained_tokens_ours": o_trained,
                "trained_tokens_trl": t_trained,
                "longest_example_tokens": o_longest,
                "trl_rows": prepared.num_rows,
                "identical_examples": same,
                "outputs_match": same == n == prepared.num_rows,
                "runs": runs,
                "ours": {"seconds": best["ours"], "all_runs_s": all_runs["ours"],
                         "tokens_per_s": o_total / best["ours"],
                         "conversations_per_s": n / best["ours"],
                         "s_per_1k_conversations": best["ours"] / n * 1000},
                "trl": {"seconds": best["trl"], "all_runs_s": all_runs["trl"],
                        "tokens_per_s": t_total / best["trl"],
                        "conversations_per_s": n / best["trl"],
                        "s_per_1k_conversations": best["trl"] / n * 1000},
                "trl_input_dataset_build_s": build_s,
            }
            result["ratio_throughput"] = (result["ours"]["tokens_per_s"]
                                          / result["trl"]["tokens_per_s"])
            report["results"].append(result)
            log(f"size {n:,}: {o_total:,} tokens; ours {result['ours']['tokens_per_s']:,.0f} "
                f"tok/s, TRL {result['trl']['tokens_per_s']:,.0f} tok/s, ratio "
                f"{result['ratio_throughput']:.2f}x; outputs match: {result['outputs_match']}")
            del conversations, ds, ours_out, prepared
            # Only the timed runs grow with n; add the untimed per-size work (data, checks)
            # so the prediction for the next size is conservative.
            rate = (time.perf_counter() - size_t0) / (n * runs)

        # Growth relative to the smallest measured size.
        if report["results"]:
            first = report["results"][0]
            for r in report["results"]:
                for side in ("ours", "trl"):
                    r[side]["s_per_1k_relative_to_smallest"] = (
                        r[side]["s_per_1k_conversations"] / first[side]["s_per_1k_conversations"])

        if args.profile > 0:
            log(f"profiling ours (cProfile) on {args.profile:,} conversations")
            report["profile_ours"] = profile_ours(scale_up(base, args.profile), tokenizer,
                                                  args.max_length)

    report["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_prep.json").write_text(json.dumps(report, indent=2) + "\n",
                                             encoding="utf-8")
    md = markdown(report)
    (args.out / "data_prep.md").write_text(md, encoding="utf-8")
    print()
    print(md)
    log(f"wrote {args.out / 'data_prep.json'} and {args.out / 'data_prep.md'} "
        f"({report['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
