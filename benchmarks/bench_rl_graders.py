"""Benchmark: the RL capstone trained on the lenient and on the strict verifier, three seeds.

What is measured
----------------
For each seed, ``configs/capstone_rl.yaml``'s SFT → DPO → GRPO (``--seed N``, merge and
export left out) twice from the same SFT + DPO model: GRPO rewarded by ``correct`` (the
lenient ``check_answer``) and by ``correct_strict`` (its strict reading), each with
``ended`` × 0.5 as the config has. The strict run starts from a copy of the lenient run's
folder, so it reuses the SFT and DPO stages (same fingerprints) and only GRPO differs. For
every measured model (base, SFT, DPO, each GRPO): held-out chat exact match under both
graders per kind and macro over kinds, the replies only the lenient grader accepts, cloze per
kind, polite, end of turn, general-text perplexity against the base, GRPO's greedy reward on
its training prompts before and after, and its stage seconds.

Results: ``<out>/rl_graders.json`` and ``rl_graders.md``; the run folders stay under
``runs/rl_graders/seed<N>/{lenient,strict}`` (their ``report.md`` shows sample replies).

Run: ``.venv/bin/python benchmarks/bench_rl_graders.py [--seeds 0 1 2]`` on an otherwise idle
machine (about 8 minutes a seed on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _env import ROOT, environment

from ftlab.config import load_config
from ftlab.pipeline.cli import with_overrides
from ftlab.pipeline.runner import run_pipeline

REWARDS = {"lenient": {"correct": 1.0, "ended": 0.5},
           "strict": {"correct_strict": 1.0, "ended": 0.5}}
"""GRPO's reward weights in each arm."""

KEEP = ("sft", "dpo", "grpo")
"""The stages run (merge and export add nothing to the figures)."""


def arm_config(seed: int, run_dir: Path, rewards: dict[str, float]):
    """capstone_rl.yaml at ``seed`` into ``run_dir``, its GRPO rewarded by ``rewards``."""
    config = with_overrides(load_config(ROOT / "configs" / "capstone_rl.yaml"), run_dir, seed)
    stages = [s.model_copy(update={"grpo": s.grpo.model_copy(update={"rewards": rewards})})
              if s.kind == "grpo" else s for s in config.stages if s.name in KEEP]
    return config.model_copy(update={"stages": stages})


def figures(run_dir: Path) -> dict:
    """Each measured model's figures (``eval/`` prefix dropped), GRPO's before/after greedy
    rewards and every stage's seconds, from the run's ``metrics.json``."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {"base": metrics["baseline"]["metrics"]}
    for name, stage in metrics["stages"].items():
        rows[name] = {k[5:]: v for k, v in stage["metrics"].items() if k.startswith("eval/")}
        rows[name] |= {k: v for k, v in stage["metrics"].items()
                       if k.startswith(("before/", "after/")) or k == "seconds"}
    return rows


def run_seed(seed: int, root: Path) -> dict:
    out = {}
    for arm in ("lenient", "strict"):
        run_dir = root / f"seed{seed}" / arm
        if arm == "strict" and not (run_dir / "metrics.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(root / f"seed{seed}" / "lenient", run_dir)
        run_pipeline(arm_config(seed, run_dir, REWARDS[arm]), progress=False,
                     print_fn=lambda line: print(f"[seed {seed} {arm}] {line}", flush=True))
        out[arm] = figures(run_dir)
    return out


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def table(report: dict) -> str:
    env, seeds = report["environment"], report["seeds"]
    names = sorted(seeds)
    kinds = sorted(k.split("/", 1)[1] for k in seeds[names[0]]["lenient"]["grpo"]
                   if k.startswith("strict/") and k != "strict/macro")
    head = "| figure | " + " | ".join(f"seed {s}" for s in names) + " |"
    lines = ["# The RL capstone on the lenient and the strict verifier", "",
             f"{env['date']}, {env['cpu']['model']} ({env['cpu_count']} CPUs, torch kernels "
             f"{env['cpu']['torch_capability']}), torch {env['torch']}, commit {env['git_commit']}. "
             "Produced by `benchmarks/bench_rl_graders.py`. Held-out chat questions (facts held "
             "out of SFT); *lenient* and *strict* are the two readings of `check_answer`; "
             "cells are lenient-trained / strict-trained GRPO unless said.", "",
             head, "|---" + "|---:" * len(names) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(seeds[s]) for s in names) + " |")

    for key, label in (("exact_match/macro", "lenient grader, macro"),
                       ("strict/macro", "strict grader, macro")):
        row(f"{label}: after DPO → GRPO on lenient / GRPO on strict",
            lambda r, k=key: f"{pct(r['lenient']['dpo'][k])} → {pct(r['lenient']['grpo'][k])}"
                             f" / **{pct(r['strict']['grpo'][k])}**")
    row("replies right only leniently (of all held-out): DPO → lenient / strict GRPO",
        lambda r: f"{r['lenient']['dpo']['lenient_only']:.0f} → "
                  f"{r['lenient']['grpo']['lenient_only']:.0f} / "
                  f"{r['strict']['grpo']['lenient_only']:.0f}")
    row("strict grader per kind (" + " / ".join(kinds) + "), GRPO on lenient",
        lambda r: " / ".join(f"{r['lenient']['grpo'][f'strict/{k}']:.0%}" for k in kinds))
    row("strict grader per kind, GRPO on strict",
        lambda r: " / ".join(f"{r['strict']['grpo'][f'strict/{k}']:.0%}" for k in kinds))
    row("lenient grader per kind, GRPO on strict",
        lambda r: " / ".join(f"{r['strict']['grpo'][f'exact_match/{k}']:.0%}" for k in kinds))
    row("cloze per kind, GRPO on strict",
        lambda r: " / ".join(f"{r['strict']['grpo'][f'cloze/{k}']:.0%}" for k in kinds))
    row("polite / end of turn, GRPO on lenient; on strict",
        lambda r: f"{pct(r['lenient']['grpo']['polite'])} / {pct(r['lenient']['grpo']['ended'])}"
                  f"; {pct(r['strict']['grpo']['polite'])} / {pct(r['strict']['grpo']['ended'])}")
    row("general ppl vs base: DPO / GRPO lenient / GRPO strict",
        lambda r: " / ".join(f"{r[a][st]['general_ppl'] / r['lenient']['base']['general_ppl']:.3f}x"
                             for a, st in (("lenient", "dpo"), ("lenient", "grpo"),
                                           ("strict", "grpo"))))
    row("GRPO stage seconds, lenient / strict",
        lambda r: f"{r['lenient']['grpo']['seconds']:.0f} / {r['strict']['grpo']['seconds']:.0f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "rl_graders")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    report = {"environment": environment("trl"), "rewards": REWARDS,
              "seeds": {str(s): run_seed(s, args.runs) for s in args.seeds}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rl_graders.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "rl_graders.md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
