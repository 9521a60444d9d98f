"""Benchmark: how long a learner waits — each notebook under nbval and each milestone's checks.

What is measured
----------------
Wall seconds of ``python -m pytest <target> -q -p no:cacheprovider`` for every notebook in
``notebooks/`` (executed by nbval, as the test suite runs them) and every milestone folder in
``milestones/`` (the learner's ``pytest milestones/<m>`` grading), one at a time with the
machine's torch threads, each in a fresh process. ``--tree DIR`` times another checkout of the
project (e.g. ``git worktree add /tmp/before <commit>``): its ``src`` goes first on
``PYTHONPATH``, so its own code, data and notebooks run with this environment's packages.
Each target runs ``--repeats`` times (default 1) and the median is kept; a target that fails
is recorded as failed, not timed.

``--compare BEFORE.json AFTER.json`` writes the side-by-side table (``<out>/course_time.md``)
of two such runs: seconds before, after, and the ratio.

Run: ``.venv/bin/python benchmarks/bench_course_time.py [--tree DIR] --save FILE.json``, then
``--compare before.json after.json``. Use an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _env import ROOT, environment


def targets(tree: Path) -> list[str]:
    notebooks = sorted(str(p.relative_to(tree)) for p in (tree / "notebooks").glob("*.ipynb"))
    milestones = sorted(str(p.relative_to(tree)) for p in (tree / "milestones").iterdir()
                        if p.is_dir() and not p.name.startswith((".", "_")))
    return notebooks + milestones


def time_target(tree: Path, target: str) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", target, "-q", "-p",
                          "no:cacheprovider"], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    return out.returncode == 0, seconds, summary


def run(args) -> dict:
    tree = (args.tree or ROOT).resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree,
                            capture_output=True, text=True).stdout.strip()
    rows = {}
    for target in targets(tree):
        times, ok, summary = [], True, ""
        for _ in range(args.repeats):
            passed, seconds, summary = time_target(tree, target)
            ok &= passed
            times.append(seconds)
        rows[target] = {"ok": ok, "seconds": statistics.median(times), "all": times,
                        "summary": summary}
        print(f"{target}: {rows[target]['seconds']:.1f} s {'ok' if ok else 'FAILED'} "
              f"({summary})", flush=True)
    return {"environment": environment(), "tree_commit": commit, "rows": rows}


def compare(before: dict, after: dict) -> str:
    env = after["environment"]
    lines = ["# Course wait: notebooks under nbval and milestone checks, before and after", "",
             f"{env['date']}, {env['cpu_count']} CPUs ({env['torch_threads']} torch threads), "
             f"torch {env['torch']}; before: commit {before['tree_commit']}, after: commit "
             f"{after['tree_commit']}; each target alone on an otherwise idle machine "
             "(`python -m pytest <target> -q`). Produced by "
             "`benchmarks/bench_course_time.py`.", "",
             "| target | before s | after s | after / before |", "|---|---:|---:|---:|"]
    total = [0.0, 0.0]
    for target in sorted(set(before["rows"]) | set(after["rows"])):
        b, a = before["rows"].get(target), after["rows"].get(target)
        cell = lambda r: "—" if r is None else (f"{r['seconds']:.1f}" if r["ok"] else "failed")
        ratio = (f"{a['seconds'] / b['seconds']:.2f}" if a and b and a["ok"] and b["ok"]
                 else "—")
        if a and b and a["ok"] and b["ok"]:
            total[0] += b["seconds"]
            total[1] += a["seconds"]
        lines.append(f"| {target} | {cell(b)} | {cell(a)} | {ratio} |")
    lines.append(f"| **all of them** | {total[0]:.1f} | {total[1]:.1f} | "
                 f"**{total[1] / total[0]:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, help="another checkout to time (default: this one)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--save", type=Path, help="write the timings here (JSON)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "course_time.md").write_text(compare(before, after))
        (args.out / "course_time.json").write_text(
            json.dumps({"before": before, "after": after}, indent=1) + "\n")
        print(compare(before, after))
        return 0
    report = run(args)
    if args.save:
        args.save.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r["ok"] for r in report["rows"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
