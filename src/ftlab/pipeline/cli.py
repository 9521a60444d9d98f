"""``ftlab run``: validate, print the plan, run, print the summary (given)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from ftlab.config import PipelineConfig, load_config
from ftlab.errors import ConfigError, FtlabError
from ftlab.hardware import threads_per_process
from ftlab.paths import default_config, shown
from ftlab.pipeline.lock import run_folder_lock
from ftlab.pipeline.runner import (PlannedStage, StageRecord, plan, read_state, reusable,
                                   run_pipeline, to_run)
from ftlab.train.distributed import joined


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
    lines = [f"base model: {shown(config.model.name_or_path)} ({config.model.dtype}), "
             f"seed {config.seed}", f"run folder: {shown(config.run_dir)}"]
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
                seed: int | None = None, progress: bool = True, nproc: int = 1) -> int:
    """``ftlab run``. With ``nproc`` > 1 (and not already launched) the config is planned
    here, then run by ``nproc`` processes (:func:`launch`); under a launcher (torchrun,
    accelerate launch) this process joins the others and rank 0 alone prints."""
    path = config_path or default_config()
    config = with_overrides(load_config(path), run_dir, seed)
    with joined() as here:
        if nproc > 1 and here.distributed:
            raise ConfigError(f"--nproc {nproc}: this process was already launched as one of "
                              f"{here.world_size}; use --nproc with a plain `ftlab run`, or the "
                              "launcher alone")
        say = print if here.is_main else (lambda *a, **k: None)
        plan_shown = os.environ.get(PLAN_SHOWN) == "1"  # by the `--nproc` process that launched us
        processes = max(nproc, here.world_size)
        planned = plan(config, path, processes=processes)
        reuse = reusable(read_state(Path(config.run_dir)), Path(config.run_dir)) if here.is_main else None
        if here.is_main and not plan_shown:
            print(f"config: {shown(path)}\n" + plan_text(config, planned=planned, reuse=reuse)
                  + (f"\nprocesses: {processes} (data parallel)" if processes > 1 else ""))
        if dry_run:
            say("dry run: the config is valid; nothing was loaded or trained")
            return 0
        if nproc > 1:
            return launch(nproc, ["run", str(path), "--run-dir", str(config.run_dir),
                                  *(["--seed", str(seed)] if seed is not None else []),
                                  *([] if progress else ["--no-progress"])])
        # one run per run folder: rank 0 holds the lock for all its processes
        with run_folder_lock(Path(config.run_dir), say) if here.is_main else nullcontext():
            summary = run_pipeline(config, progress=progress and here.is_main, source=path,
                                   planned=planned, reuse=reuse, print_fn=say)
        say()
        say(summary["summary_table"])
        say()
        say(summary["kinds_table"])
        reused = summary["reused_stages"]
        say(f"\n{'reused: ' + ', '.join(reused) + '; ' if reused else ''}"
            f"finished in {summary['seconds_this_run']:.0f} s; report: {Path(config.run_dir) / 'report.md'}")
        return 0


PLAN_SHOWN = "FTLAB_PLAN_SHOWN"
"""Set by :func:`launch` for the processes it starts: the plan was printed already."""


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``ftlab <argv>`` as ``nproc`` data-parallel processes on this machine with
    torchrun (a standalone rendezvous): the user never writes a launcher. On CPU each
    process gets ``cores // nproc`` torch threads; on CUDA one GPU each, and more processes
    than GPUs is a :class:`ConfigError`. A process that fails stops the others (torchrun);
    returns the exit status, and says which process failed."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} "
                          "GPU(s); start at most one process per GPU")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(nproc)),
           "PYTHONUNBUFFERED": "1", PLAN_SHOWN: "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "ftlab.cli", *argv]
    print(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} "
          f"-m ftlab.cli {' '.join(argv)}", flush=True)
    status = subprocess.run(command, env=env).returncode
    if status:
        raise FtlabError(f"the run stopped: a process failed (torchrun exited {status}); its "
                         "error is above. Completed stages and checkpoints are kept: run the "
                         "same command again to resume")
    return 0
