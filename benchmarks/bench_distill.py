"""Benchmark: the distillation capstone over seeds — the RL capstone's model taught to the
student offline, on-policy and sequence-level, beside the student trained without a teacher.

What is measured
----------------
``configs/capstone_distill.yaml`` at each seed (``--seed N``: the student's adapters, data
order and sampling; the teacher is the same: ``runs/capstone_rl/merge/model``, made by
``configs/capstone_rl.yaml`` at seed 0, which this script runs first when it is missing).
For the teacher (the RL capstone's GRPO stage, as its run measured it) and each of the four
students: held-out chat exact match (lenient and strict) per kind and macro over kinds, the
replies only the lenient grader accepts, cloze per kind and macro, polite, end of turn,
general-text perplexity against the base, and each stage's seconds; sequence mode's kept
replies per kind. Then, in one process one after the other, the teacher and the sequence
student merged (seed 0): parameters, safetensors size and greedy tokens/s at batch 1 and 16
(``bench_student.size_and_speed``: 64 new tokens, median of 5).

Results: ``<out>/distill.json`` and ``distill.md``; the run folders stay under
``runs/capstone_distill_seeds/seed<N>``.

Run: ``.venv/bin/python benchmarks/bench_distill.py [--seeds 0 1 2]`` on an otherwise idle
machine (about 2.5 minutes a seed on 2 cores, and the RL capstone's 4 minutes when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from _env import ROOT, environment
from bench_student import size_and_speed

from ftlab.config import load_config
from ftlab.pipeline.cli import with_overrides
from ftlab.pipeline.runner import run_pipeline

TEACHER_RUN = ROOT / "runs" / "capstone_rl"
STUDENTS = ("student_sft", "offline", "on_policy", "sequence")
"""The capstone_distill stages, the no-teacher baseline first."""


def measured(metrics: dict) -> dict:
    """A stage's measurements (``eval/`` dropped) with its seconds and sequence counts."""
    return ({k[5:]: v for k, v in metrics.items() if k.startswith("eval/")}
            | {k: v for k, v in metrics.items() if k.startswith("sequence/") or k == "seconds"})


def run_seed(seed: int, root: Path) -> dict:
    run_dir = root / f"seed{seed}"
    config = with_overrides(load_config(ROOT / "configs" / "capstone_distill.yaml"), run_dir, seed)
    run_pipeline(config, progress=False,
                 print_fn=lambda line: print(f"[seed {seed}] {line}", flush=True))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"base": metrics["baseline"]["metrics"],
            **{name: measured(metrics["stages"][name]["metrics"]) for name in STUDENTS}}


def pct(v: float) -> str:
    return f"{v:.1%}"


def table(report: dict) -> str:
    env, seeds, teacher = report["environment"], report["seeds"], report["teacher"]
    names = sorted(seeds)
    kinds = sorted(k.split("/", 1)[1] for k in teacher if k.startswith("exact_match/")
                   and k != "exact_match/macro")

    def mean(name: str, key: str) -> float:
        return statistics.mean(seeds[s][name][key] for s in names)

    def cells(key: str, fmt=pct) -> list[str]:
        per = {n: " / ".join(fmt(seeds[s][n][key]) for s in names) for n in STUDENTS}
        return [fmt(teacher[key])] + [f"{per[n]} (mean {fmt(mean(n, key))})" for n in STUDENTS]

    def ratio(v: float) -> str:
        return f"{v:.2f}x"

    lines = ["# The distillation capstone over seeds", "",
             f"{env['date']}, {env['cpu']['model']} ({env['cpu_count']} CPUs, torch kernels "
             f"{env['cpu']['torch_capability']}), torch {env['torch']}, commit {env['git_commit']}. "
             "Produced by `benchmarks/bench_distill.py`. Held-out chat questions (facts held out "
             f"of SFT); student cells are seeds {' / '.join(names)} and their mean; the teacher "
             "is the RL capstone at seed 0 (one model teaches every seed).", "",
             "| held-out figure | teacher (GRPO capstone) | " + " | ".join(STUDENTS) + " |",
             "|---" + "|---:" * (1 + len(STUDENTS)) + "|"]
    for key, label in (("exact_match/macro", "chat exact match, macro over kinds"),
                       ("strict/macro", "strict, macro"), ("exact_match", "chat exact match, micro"),
                       ("cloze/macro", "cloze, macro"), ("polite", "polite")):
        lines.append(f"| {label} | " + " | ".join(cells(key)) + " |")
    lines.append("| replies right only leniently | " + " | ".join(
        cells("lenient_only", lambda v: f"{v:.0f}")) + " |")
    for kind in kinds:
        lines.append(f"| chat exact match: {kind} | " + " | ".join(
            cells(f"exact_match/{kind}", lambda v: f"{v:.0%}")) + " |")
    base_ppl = seeds[names[0]]["base"]["general_ppl"]
    lines.append("| general-text perplexity vs base | " + " | ".join(
        [ratio(teacher["general_ppl"] / base_ppl)]
        + [" / ".join(ratio(seeds[s][n]["general_ppl"] / base_ppl) for s in names)
           for n in STUDENTS]) + " |")
    lines.append("| stage seconds | — | " + " | ".join(
        " / ".join(f"{seeds[s][n]['seconds']:.0f}" for s in names) for n in STUDENTS) + " |")
    best = max(STUDENTS[1:], key=lambda n: mean(n, "exact_match/macro"))
    lines += ["", f"Best distilled student: **{best}**, macro {pct(mean(best, 'exact_match/macro'))} "
              f"= {mean(best, 'exact_match/macro') / teacher['exact_match/macro']:.0%} of the "
              f"teacher's {pct(teacher['exact_match/macro'])} (target ≥ 80%), "
              f"{100 * (mean(best, 'exact_match/macro') - mean('student_sft', 'exact_match/macro')):+.1f} "
              "points over the student without a teacher (target ≥ +10).", "",
              "Sequence mode, replies kept of 4 per question (right, finished, distinct), per kind: "
              + "; ".join(f"seed {s}: " + ", ".join(
                  f"{k} {seeds[s]['sequence'][f'sequence/kept/{k}']:.0f}" for k in kinds)
                  for s in names), "",
              "| model | parameters | model.safetensors | greedy tokens/s, batch 1 | batch 16 |",
              "|---|---:|---:|---:|---:|"]
    for name, m in report["speed"].items():
        lines.append(f"| {name} | {m['parameters']:,} | {m['file_mb']:.1f} MiB | "
                     f"{m['tokens_per_s']['batch 1']:.0f} | {m['tokens_per_s']['batch 16']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "capstone_distill_seeds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    os.chdir(ROOT)  # the config names the teacher relative to the project
    if not (TEACHER_RUN / "merge" / "model").is_dir():
        run_pipeline(load_config(ROOT / "configs" / "capstone_rl.yaml"), progress=False)
    teacher = json.loads((TEACHER_RUN / "metrics.json").read_text())["stages"]["grpo"]["metrics"]
    seeds = {str(s): run_seed(s, args.runs) for s in args.seeds}
    report = {"environment": environment("transformers"), "seeds": seeds,
              "teacher": measured(teacher),
              "speed": {"teacher (GRPO capstone, merged)": size_and_speed(TEACHER_RUN / "merge" / "model", 64, 5),
                        "sequence student (merged, seed "
                        f"{args.seeds[0]})": size_and_speed(
                            args.runs / f"seed{args.seeds[0]}" / "merge" / "model", 64, 5)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "distill.md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
