"""Benchmark: the main job (``ftlab run``, the capstone) of two checkouts, side by side.

What is measured
----------------
Wall seconds of ``python -m ftlab.cli run --run-dir <fresh folder> --no-progress`` (the default
config, ``configs/capstone.yaml``, of each checkout) for ``--before`` and ``--after``, each a
checkout of the project (``git worktree add /tmp/before <commit>``; default ``--after``: this
one): its ``src`` goes first on ``PYTHONPATH``, so its own code, config, data and base model
run with this environment's packages. The two alternate ``--repeats`` times (before, after,
after, before, ...), each run a fresh process into an empty run folder; the median is kept.
Beside the wall time: each training stage's seconds from the run's ``metrics.json``, and the
measured figures the capstone's targets are about (exact match and its macro average after
SFT and DPO, polite, end of turn, general-text perplexity ratio), which must stay where they
were.

Results: ``<out>/main_job.json`` and ``main_job.md``.

Run: ``.venv/bin/python benchmarks/bench_main_job.py --before /tmp/before [--repeats 2]``, on
an otherwise idle machine.
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

from _env import ROOT, environment

FIGURES = {"exact match": "eval/exact_match", "exact match, macro": "eval/exact_match/macro",
           "polite": "eval/polite", "ends at end of turn": "eval/ended",
           "general ppl": "eval/general_ppl"}
"""Row label -> metric key of a stage in ``metrics.json``."""


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                          capture_output=True, text=True).stdout.strip()


def run_once(tree: Path) -> dict:
    """One ``ftlab run`` of ``tree`` into a fresh folder: wall seconds, stage seconds and the
    stages' figures."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    with tempfile.TemporaryDirectory(prefix="ftlab-main-job-") as tmp:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "ftlab.cli", "run", "--run-dir", tmp,
                              "--no-progress"], cwd=tree, env=env, capture_output=True,
                             text=True)
        seconds = time.perf_counter() - start
        if out.returncode:
            raise RuntimeError(f"ftlab run in {tree} failed:\n{out.stdout[-2000:]}"
                               f"{out.stderr[-2000:]}")
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    stages, base_ppl = metrics["stages"], metrics["baseline"]["metrics"]["general_ppl"]
    figures = {name: {label: s["metrics"][key] for label, key in FIGURES.items()}
               for name, s in stages.items() if name in ("sft", "dpo")}
    for stage in figures.values():
        stage["ppl vs base"] = stage.pop("general ppl") / base_ppl
    return {"seconds": seconds,
            "stage_seconds": {name: s["metrics"].get("seconds") for name, s in stages.items()},
            "figures": figures}


def table(report: dict) -> str:
    env, runs = report["environment"], report["runs"]
    lines = ["# The main job (`ftlab run`), before and after", "",
             f"{env['date']}, {env['cpu_count']} CPUs, torch {env['torch']}; before: commit "
             f"{report['commits']['before']}, after: commit {report['commits']['after']}; "
             f"{report['repeats']} runs each, alternating, median kept. Produced by "
             "`benchmarks/bench_main_job.py`.", "",
             "| | before | after | after / before |", "|---|---:|---:|---:|"]
    median = {k: statistics.median(r["seconds"] for r in runs[k]) for k in runs}
    lines.append(f"| wall seconds (median) | {median['before']:.1f} | {median['after']:.1f} | "
                 f"**{median['after'] / median['before']:.2f}** |")
    every = {k: " / ".join(f"{r['seconds']:.0f}" for r in runs[k]) for k in runs}
    lines.append(f"| wall seconds (every run) | {every['before']} | {every['after']} | |")
    for stage in ("sft", "dpo"):
        b = statistics.median(r["stage_seconds"][stage] for r in runs["before"])
        a = statistics.median(r["stage_seconds"][stage] for r in runs["after"])
        lines.append(f"| {stage} stage seconds (median) | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    for stage in ("sft", "dpo"):
        for label in [*list(FIGURES)[:-1], "ppl vs base"]:
            cell = {k: runs[k][0]["figures"][stage][label] for k in runs}
            show = (lambda v: f"{v:.3f}x") if label == "ppl vs base" else (lambda v: f"{v:.1%}")
            lines.append(f"| {label} after {stage} (first run) | {show(cell['before'])} | "
                         f"{show(cell['after'])} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="the checkout to compare with")
    p.add_argument("--after", type=Path, default=ROOT)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.repeats):
        for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
            runs[name].append(run_once(trees[name]))
            print(f"{name}: {runs[name][-1]['seconds']:.1f} s "
                  f"{runs[name][-1]['stage_seconds']}", flush=True)
    report = {"environment": environment(), "repeats": args.repeats, "runs": runs,
              "commits": {k: commit_of(t) for k, t in trees.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "main_job.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "main_job.md").write_text(table(report))
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
