"""``ftlab run``: validate, print the plan, run, print the summary (given)."""

from __future__ import annotations

from pathlib import Path

from ftlab.config import PipelineConfig, load_config
from ftlab.paths import default_config
from ftlab.pipeline.runner import plan, read_state, run_pipeline


def with_overrides(config: PipelineConfig, run_dir: Path | None, seed: int | None
                   ) -> PipelineConfig:
    """``config`` with ``run_dir`` and ``seed`` replaced when given; the seed also becomes
    every stage's ``train.seed`` and ``data.seed`` (a different run, not a resumed one)."""
    update: dict = {}
    if run_dir is not None:
        update["run_dir"] = run_dir
    if seed is not None:
        update["seed"] = seed
        update["stages"] = [
            stage.model_copy(update={
                "train": stage.train.model_copy(update={"seed": seed}) if stage.train else None,
                "data": stage.data.model_copy(update={"seed": seed}) if stage.data else None})
            for stage in config.stages]
    return config.model_copy(update=update)


def plan_text(config: PipelineConfig) -> str:
    """The printed plan: base model, run folder and one line per stage."""
    planned = plan(config)
    state = read_state(Path(config.run_dir))
    lines = [f"base model: {config.model.name_or_path} ({config.model.dtype}), seed {config.seed}",
             f"run folder: {config.run_dir}"]
    for i, p in enumerate(planned, 1):
        done = state["stages"].get(p.name)
        mark = " [done; reused]" if done and done["fingerprint"] == p.fingerprint else ""
        lines.append(f"  {i}. {p.name}: {p.stage.describe()}{mark}")
    return "\n".join(lines)


def run_command(config_path: Path | None, dry_run: bool = False, run_dir: Path | None = None,
                seed: int | None = None, progress: bool = True) -> int:
    path = config_path or default_config()
    config = with_overrides(load_config(path), run_dir, seed)
    print(f"config: {path}")
    print(plan_text(config))
    if dry_run:
        print("dry run: the config is valid; nothing was loaded or trained")
        return 0
    summary = run_pipeline(config, progress=progress)
    print()
    print(summary["summary_table"])
    print()
    print(summary["kinds_table"])
    reused = summary["reused_stages"]
    print(f"\n{'reused: ' + ', '.join(reused) + '; ' if reused else ''}"
          f"finished in {summary['seconds_this_run']:.0f} s; report: {Path(config.run_dir) / 'report.md'}")
    return 0
