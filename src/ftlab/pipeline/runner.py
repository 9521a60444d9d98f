"""Running a pipeline: plan, chain the stages (C.3), resume, report (C.3 region + given).

``run_dir`` layout::

    config.yaml        the validated config, every default spelled out
    state.json         each completed stage's fingerprint and result (written after each stage)
    base/              measurements of the model the run starts from
    <stage name>/      each stage's own folder (training run, adapter, merged model, exports)
    report.md, metrics.json, plots/   written after every stage

Running again on the same ``run_dir`` resumes: completed stages whose config did not change
are not run again, and the first stage that runs invalidates every stage after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftlab.config import EvalConfig, PipelineConfig, StageConfig, save_config
from ftlab.errors import ConfigError
from ftlab.pipeline.context import (EMBEDDED, ModelRef, StageContext, StageResult, load_model,
                                    load_model_tokenizer)
from ftlab.pipeline.measure import heldout_pairs, measure
from ftlab.pipeline.registry import Stage, stage_for

STATE = "state.json"
STAGE_MARKER = ".ftlab-stage.json"
"""In each stage folder: the fingerprint and input it was run with."""


@dataclass(frozen=True)
class PlannedStage:
    """A stage of the plan: its config, its stage object and the fingerprint of its config
    (a completed stage is reused only while its fingerprint is unchanged)."""

    name: str
    config: StageConfig
    stage: Stage
    fingerprint: str


@dataclass(frozen=True)
class StageRecord:
    """A completed stage as recorded in ``state.json``."""

    fingerprint: str
    result: StageResult


def fingerprint(run: PipelineConfig, stage: StageConfig) -> str:
    """sha256 of the stage's config (JSON), the base model and the run seed."""
    text = json.dumps({"stage": stage.model_dump(mode="json"), "model":
                       run.model.model_dump(mode="json"), "seed": run.seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def plan(config: PipelineConfig) -> list[PlannedStage]:
    """Every stage with its stage object, checked in order before anything runs.

    Raises one :class:`ConfigError` listing every problem (``stages[i] (name): ...``).
    """
    planned, problems, has_adapter = [], [], False
    for index, stage_config in enumerate(config.stages):
        try:
            stage = stage_for(stage_config)
        except ConfigError as e:
            problems.append(f"stages[{index}] ({stage_config.name}): {e}")
            continue
        problems += [f"stages[{index}] ({stage_config.name}): {p}" for p in stage.check(has_adapter)]
        has_adapter = (has_adapter or stage.trains) and not stage.needs_adapter
        planned.append(PlannedStage(stage_config.name, stage_config, stage,
                                    fingerprint(config, stage_config)))
    if problems:
        raise ConfigError("the pipeline cannot run:\n" + "\n".join(problems))
    return planned


def chain(planned: list[PlannedStage], done: dict[str, StageRecord], start: ModelRef,
          run: Callable[[PlannedStage, ModelRef], StageResult],
          record: Callable[[PlannedStage, StageResult], None]) -> list[StageResult]:
    """Run the planned stages in order, each on the model the previous one handed on.

    ``start``: the model the first stage receives. ``done``: records of stages completed in
    an earlier run, by name. A stage is *reused* (its recorded result taken, ``run`` not
    called) when it is in ``done`` with the same fingerprint and no earlier stage ran in
    this call; otherwise ``run(stage, model)`` runs it — and once one stage has run, every
    later stage must run too, since its input changed. ``record(stage, result)`` is called
    right after each stage that ran, before the next one starts, so an interrupted run
    resumes after the last completed stage. Returns every stage's result, in order.
    """
    ### BEGIN SOLUTION C.3
    results: list[StageResult] = []
    model, rerun = start, False
    for stage in planned:
        previous = done.get(stage.name)
        if not rerun and previous is not None and previous.fingerprint == stage.fingerprint:
            result = previous.result
        else:
            rerun = True
            result = run(stage, model)
            record(stage, result)
        results.append(result)
        model = result.model
    return results
    ### END SOLUTION


def read_state(run_dir: Path) -> dict:
    """``state.json`` of ``run_dir`` (empty state when absent)."""
    path = run_dir / STATE
    if not path.is_file():
        return {"baseline": None, "stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: damaged run state; delete it to start the run over") from None


def write_state(run_dir: Path, state: dict) -> None:
    """Write ``state.json`` atomically (temp file, fsync, rename)."""
    tmp = run_dir / (STATE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / STATE)


def done_records(state: dict) -> dict[str, StageRecord]:
    return {name: StageRecord(r["fingerprint"], StageResult.from_json(r["result"]))
            for name, r in state["stages"].items()}


def input_signature(model: ModelRef) -> list:
    """What identifies the model a stage starts from on disk: its path and the size and
    modification time of every file of its folder and adapters (a retrained upstream stage
    rewrites them)."""
    folders = [Path(p) for p in (model.path, *model.adapters) if Path(p).is_dir()]
    files = sorted(f for folder in folders for f in folder.rglob("*") if f.is_file())
    return [model.path, [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]


def stage_folder(folder: Path, stage_fingerprint: str, model: ModelRef) -> Path:
    """``folder``, ready for a stage to run in.

    A folder left by an interrupted run of the same stage on the same input is kept, so the
    stage's trainer resumes from its checkpoints; one from other settings or another input is
    emptied first. A non-empty folder ftlab did not write is refused.
    """
    marker = folder / STAGE_MARKER
    want = {"fingerprint": stage_fingerprint, "input": input_signature(model)}
    if folder.exists() and any(folder.iterdir()):
        if not marker.is_file():
            raise ConfigError(f"{folder}: exists and was not written by an ftlab run; "
                              "choose another run_dir or stage name")
        if json.loads(marker.read_text()) != want:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(want))
    return folder


def quiet_loading() -> None:
    """Switch off transformers' per-load progress bars ("Loading weights", "Writing model
    shards"): a run loads models a dozen times; the stages show their own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_pipeline(config: PipelineConfig, progress: bool = True,
                 print_fn: Callable[[str], None] = print) -> dict:
    """Plan, measure the starting model, chain the stages, write the report.

    Returns the run summary (as ``metrics.json``): ``baseline`` figures and each stage's
    result, in order, plus ``seconds``.
    """
    from ftlab.pipeline.report import write_report

    planned = plan(config)
    quiet_loading()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    state = read_state(run_dir)
    tokenizer = load_model_tokenizer(config.model)
    start = ModelRef(config.model.name_or_path if config.model.name_or_path != EMBEDDED else EMBEDDED)
    started = time.perf_counter()
    if state["baseline"] is None or state["baseline"].get("model") != config.model.model_dump(mode="json"):
        print_fn("measuring the base model ...")
        eval_config = next((s.eval for s in config.stages if s.eval), None) or EvalConfig()
        figures, samples = measure(load_model(start, config.model.dtype), tokenizer, eval_config,
                                   heldout_pairs(eval_config, tokenizer))
        state["baseline"] = {"model": config.model.model_dump(mode="json"), "metrics": figures,
                             "samples": samples}
        write_state(run_dir, state)

    ran: list[str] = []

    def run_one(stage: PlannedStage, model: ModelRef) -> StageResult:
        ran.append(stage.name)
        print_fn(f"stage {stage.name}: {stage.stage.describe()}")
        folder = stage_folder(run_dir / stage.name, stage.fingerprint, model)
        began = time.perf_counter()
        earlier = {p.name: StageResult.from_json(state["stages"][p.name]["result"])
                   for p in planned[:planned.index(stage)] if p.name in state["stages"]}
        result = stage.stage.run(StageContext(config, stage.config, folder, model, tokenizer,
                                              progress, earlier, state["baseline"]["metrics"]))
        result.metrics["seconds"] = time.perf_counter() - began
        return result

    def record(stage: PlannedStage, result: StageResult) -> None:
        state["stages"][stage.name] = {"fingerprint": stage.fingerprint,
                                       "result": result.to_json()}
        later = [p.name for p in planned[planned.index(stage) + 1:]]
        for name in later:  # their inputs changed: never reuse them
            state["stages"].pop(name, None)
        write_state(run_dir, state)
        write_report(run_dir, config, state, planned)

    chain(planned, done_records(state), start, run_one, record)
    summary = write_report(run_dir, config, state, planned)
    summary["seconds_this_run"] = time.perf_counter() - started
    summary["reused_stages"] = [p.name for p in planned if p.name not in ran]
    return summary
