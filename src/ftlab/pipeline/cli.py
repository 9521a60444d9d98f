"""``ftlab run``: validate, print the plan, run, print the summary (given)."""

from __future__ import annotations

from pathlib import Path

from ftlab.config import PipelineConfig, load_config
from ftlab.paths import default_config
from ftlab.pipeline.runner import (PlannedStage, StageRecord, plan, read_state, reusable,
                                   run_pipeline, to_run)


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


def plan_text(config: PipelineConfig, source: Path | None = None, check_model: bool = True,
              planned: list[PlannedStage] | None = None,
              reuse: tuple[dict[str, StageRecord], dict[str, str]] | None = None) -> str:
    """The printed plan: base model, run folder and one line per stage, each marked as the
    run will treat it: reused (completed, outputs verified) or run, and why.
    ``check_model=False`` plans a config whose model is not on this machine; ``planned``
    and ``reuse`` (:func:`plan`, :func:`reusable`) are computed when not given."""
    planned = planned if planned is not None else plan(config, source, check_model)
    run_dir = Path(config.run_dir)
    state = read_state(run_dir)
    done, refused = reuse if reuse is not None else reusable(state, run_dir)
    try:
        will_run = set(to_run(planned, done))
    except NotImplementedError:  # the learner edition before C.3 is done
        will_run = None
    lines = [f"base model: {config.model.name_or_path} ({config.model.dtype}), seed {config.seed}",
             f"run folder: {config.run_dir}"]
    for i, p in enumerate(planned, 1):
        recorded = state["stages"].get(p.name)
        if will_run is None:
            mark = ""
        elif p.name not in will_run:
            mark = " [done; reused]"
        elif p.name in refused:
            mark = f" [runs again: recorded outputs changed: {refused[p.name]}]"
        elif recorded and recorded["fingerprint"] != p.fingerprint:
            mark = " [runs again: its config or data changed]"
        elif recorded:
            mark = " [runs again: an earlier stage runs]"
        else:
            mark = ""
        lines.append(f"  {i}. {p.name}: {p.stage.describe()}{mark}")
    return "\n".join(lines)


def check_command(path: Path) -> int:
    """``ftlab config check``: everything ``ftlab run --dry-run`` refuses, without a plan."""
    plan(load_config(path), path)
    print(f"{path}: valid")
    return 0


def run_command(config_path: Path | None, dry_run: bool = False, run_dir: Path | None = None,
                seed: int | None = None, progress: bool = True) -> int:
    path = config_path or default_config()
    config = with_overrides(load_config(path), run_dir, seed)
    print(f"config: {path}")
    planned = plan(config, path)
    reuse = reusable(read_state(Path(config.run_dir)), Path(config.run_dir))
    print(plan_text(config, planned=planned, reuse=reuse))
    if dry_run:
        print("dry run: the config is valid; nothing was loaded or trained")
        return 0
    summary = run_pipeline(config, progress=progress, source=path, planned=planned, reuse=reuse)
    print()
    print(summary["summary_table"])
    print()
    print(summary["kinds_table"])
    reused = summary["reused_stages"]
    print(f"\n{'reused: ' + ', '.join(reused) + '; ' if reused else ''}"
          f"finished in {summary['seconds_this_run']:.0f} s; report: {Path(config.run_dir) / 'report.md'}")
    return 0
