"""Running a pipeline: plan, chain the stages (C.3), resume, report (C.3 region + given).

``run_dir`` layout::

    config.yaml        the validated config, every default spelled out
    state.json         each completed stage's fingerprint, result and output manifest
                       (written after each stage; paths in it are relative to the run folder)
    <stage name>/      each stage's own folder (training run, adapter, merged model, exports,
                       data_report.txt: every record its data loading rejected, with file:line)
    report.md, metrics.json, plots/   written after every stage

Running again on the same ``run_dir`` resumes: a completed stage is reused while its
fingerprint (its config, the base model, the seed and the *contents* of its data files) is
unchanged and every output it recorded is on disk with the same sha256; otherwise it runs
again, and the first stage that runs invalidates every stage after it. The run folder can be
moved or used from another working directory; the project can be moved.

Under data parallelism (``torchrun``, ``accelerate launch``, ``ftlab run --nproc``) every
process runs this program: training stages run on all of them, every other step (the run
folder, ``state.json``, measuring, merging, exporting, the report) on rank 0 alone, whose
decisions and results are broadcast so all processes chain the same stages.
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

from ftlab.config import (EvalConfig, PipelineConfig, StageConfig, TrainConfig, config_line,
                          save_config)
from ftlab.errors import ConfigError, FtlabError
from ftlab.files import file_manifest, folder_listing, manifest_problems, sha256_file
from ftlab.paths import data_dir
from ftlab.pipeline.baseline import measure_baseline
from ftlab.pipeline.context import (EMBEDDED, ModelRef, StageContext, StageResult, load_model,
                                    load_model_tokenizer, model_problem)
from ftlab.pipeline.lock import run_folder_problem
from ftlab.pipeline.measure import heldout_pairs, measure
from ftlab.pipeline.registry import SECTIONS, Stage, stage_for
from ftlab.train.distributed import broadcast, launched_world_size, on_main, ranks

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


def fingerprint(run: PipelineConfig, stage: StageConfig, inputs: dict | None = None) -> str:
    """sha256 of the stage's config (JSON), the base model and the run seed, with each data
    file standing for its content (sha256), not its path: a moved project keeps its
    fingerprints, an edited data file changes them. ``inputs``: what else the stage reads,
    as its :meth:`~ftlab.pipeline.registry.Stage.inputs` identifies it."""
    config = stage.model_dump(mode="json")
    data = config.get("data")
    if data:
        for key in ("path", "replay_path"):
            if data.get(key):
                data[key] = sha256_file(Path(data[key]))
        for source in data.get("mixture") or []:
            source["path"] = sha256_file(Path(source["path"]))
    if (config.get("eval") or {}).get("preference_path"):
        config["eval"]["preference_path"] = sha256_file(Path(config["eval"]["preference_path"]))
    text = json.dumps({"stage": config, "model": run.model.model_dump(mode="json"),
                       "seed": run.seed, **({"inputs": inputs} if inputs else {})}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def plan(config: PipelineConfig, source: Path | None = None, check_model: bool = True,
         processes: int | None = None) -> list[PlannedStage]:
    """Every stage with its stage object, checked in order before anything runs.

    ``check_model``: also check the base model can be loaded (:func:`model_problem`).
    ``processes``: data-parallel processes the run will have (default: as launched); each
    training stage's ``train.batch_size`` must be a multiple of it.
    Raises one :class:`ConfigError` listing every problem (``stages[i] (name): ...``),
    each prefixed ``<source>:<line>:`` when the config file ``source`` is given.
    """
    planned, problems, has_adapter, tokenizer = [], [], False, None
    earlier: dict[str, str] = {}  # name -> kind of the stages planned so far
    processes = processes or launched_world_size()
    if check_model and (problem := model_problem(config.model.name_or_path)):
        problems.append((("model", "name_or_path"), f"model.name_or_path: {problem}"))
    if problem := run_folder_problem(Path(config.run_dir)):
        problems.append((("run_dir",), f"run_dir: {config.run_dir}: {problem}"))
    for index, stage_config in enumerate(config.stages):
        where = f"stages[{index}] ({stage_config.name})"
        try:
            stage = stage_for(stage_config)
        except ConfigError as e:
            problems.append((("stages", index), f"{where}: {e}"))
            continue
        problems += [(("stages", index, *_section_of(p)), f"{where}: {p}")
                     for p in stage.check(has_adapter)]
        for key, name, kind in stage.references():
            if name not in earlier or (kind is not None and earlier[name] != kind):
                known = ", ".join(f"{n} ({k})" for n, k in earlier.items()) or "none"
                problems.append((("stages", index, *key.split(".")), (
                    f"{where}: {key}: '{name}' is not an earlier {kind + ' ' if kind else ''}stage (stages before "
                    f"this one: {known}); a stage can only read what ran before it")))
        earlier[stage_config.name] = stage_config.kind
        if check_model and not problems and type(stage).check_inputs is not Stage.check_inputs:
            tokenizer = tokenizer or load_model_tokenizer(config.model)
            problems += [(("stages", index, *(_section_of(p) or ("data", "path"))), f"{where}: {p}")
                         for p in stage.check_inputs(tokenizer)]
        batch = (stage_config.train.batch_size if stage_config.train
                 else TrainConfig().batch_size) if stage.trains else None
        if batch is not None and batch % processes:
            problems.append((("stages", index, "train", "batch_size"), (
                f"{where}: train.batch_size: {batch} examples per micro-batch cannot be shared "
                f"by {processes} processes; use a multiple of {processes} (each process "
                "takes batch_size / processes)")))
        if processes > 1 and not stage.distributed:
            problems.append((("stages", index, "kind"), (
                f"{where}: a {stage.kind} stage runs in one process; run this config without "
                "--nproc (or split the pipeline)")))
        has_adapter = (has_adapter or stage.trains) and not stage.needs_adapter
        planned.append(PlannedStage(stage_config.name, stage_config, stage,
                                    fingerprint(config, stage_config, stage.inputs())))
    if problems:
        lines = [f"{source}:{line}: {text}" if source and (line := config_line(source, loc))
                 else text for loc, text in problems]
        raise ConfigError("the pipeline cannot run:\n" + "\n".join(lines))
    return planned


def _section_of(problem: str) -> tuple[str, ...]:
    """The config keys a stage's problem names first (``export.formats: ...`` ->
    ``("export", "formats")``), to point at its line; empty when it names none."""
    head = problem.split(":", 1)[0].split(".")
    if head[0] in SECTIONS and len(head) <= 2 and all(h.isidentifier() for h in head):
        return tuple(head)
    return ()


def chain(planned: list[PlannedStage], done: dict[str, StageRecord], start: ModelRef,
          run: Callable[[PlannedStage, ModelRef], StageResult],
          record: Callable[[PlannedStage, StageResult], None]) -> list[StageResult]:
    """Run the planned stages in order, each on the model the previous one handed on.

    ``start``: the model the first stage receives. ``done``: records of stages completed in
    an earlier run, by name. A stage is *reused* (its recorded result taken, ``run`` not
    called) when it is in ``done`` with the same fingerprint and no earlier stage ran in
    this call; otherwise ``run(stage, model)`` runs it — a stage missing from ``done``
    (new, or inserted into the plan) included — and once one stage has run, every later
    stage must run too, since its input changed. ``record(stage, result)`` is called right
    after each stage that ran (never for a reused one), before the next one starts, so an
    interrupted run resumes after the last completed stage; an exception raised by ``run``
    propagates to the caller. ``planned`` and ``done`` are only read, never modified (the
    caller shows the plan from the same records). Returns every stage's result, in order.
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


RUN = "$RUN/"
"""Prefix of paths inside the run folder as ``state.json`` stores them."""
DATA = "$DATA/"
"""Prefix of paths inside the project's data folder (the embedded student, say) as
``state.json`` stores them, so a moved project's run folder still finds them."""


def _map_paths(state: dict, convert: Callable[[str], str]) -> dict:
    """``state`` with ``convert`` applied to every path of every stage result (model path,
    adapters, artifacts)."""
    stages = {}
    for name, record in state["stages"].items():
        result = record["result"]
        model = result["model"]
        stages[name] = {**record, "result": {
            **result, "model": {"path": convert(model["path"]),
                                "adapters": [convert(a) for a in model["adapters"]]},
            "artifacts": {k: convert(v) for k, v in result["artifacts"].items()}}}
    return {**state, "stages": stages}


def _portable(path: str, run_dir: Path) -> str:
    """``path`` as ``$RUN/<relative>`` when it lies in ``run_dir``, ``$DATA/<relative>``
    when it lies in the project's data folder, else unchanged."""
    if path == EMBEDDED or not Path(path).exists():
        return path
    for prefix, root in ((RUN, run_dir), (DATA, data_dir())):
        if Path(path).resolve().is_relative_to(root.resolve()):
            return prefix + Path(path).resolve().relative_to(root.resolve()).as_posix()
    return path


def _local(path: str, run_dir: Path) -> str:
    """What :func:`_portable` wrote, as a path here."""
    if path.startswith(RUN):
        return str(run_dir / path[len(RUN):])
    return str(data_dir() / path[len(DATA):]) if path.startswith(DATA) else path


def read_state(run_dir: Path) -> dict:
    """``state.json`` of ``run_dir`` (empty state when absent), paths resolved against
    ``run_dir`` as given."""
    path = run_dir / STATE
    if not path.is_file():
        return {"baseline": None, "stages": {}}
    try:
        state = json.loads(path.read_text())
        return _map_paths(state, lambda p: _local(p, run_dir))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path}: damaged run state; delete it to start the run over") from None


def write_state(run_dir: Path, state: dict) -> None:
    """Write ``state.json`` atomically (temp file, fsync, rename), paths inside the run
    folder relative to it."""
    tmp = run_dir / (STATE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_map_paths(state, lambda p: _portable(p, run_dir)), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / STATE)


def stage_outputs(result: StageResult, folder: Path) -> list[Path]:
    """The files a stage hands on that lie in its ``folder``: the artifacts it names and
    the model (and adapters) it passes to the next stage."""
    named = [*result.artifacts.values(), result.model.path, *result.model.adapters]
    inside = []
    for p in map(Path, named):
        if p.exists() and p.resolve().is_relative_to(folder.resolve()):
            inside.append(p)
    return inside


def outputs_manifest(run_dir: Path, result: StageResult, folder: Path) -> dict:
    """sha256 manifest (keyed relative to ``run_dir``) of :func:`stage_outputs`."""
    return file_manifest(run_dir.resolve(), [p.resolve() for p in stage_outputs(result, folder)])


def reusable(state: dict, run_dir: Path) -> tuple[dict[str, StageRecord], dict[str, str]]:
    """The completed stages whose recorded outputs are all on disk unchanged, and for each
    other completed stage why not (``name -> reason``)."""
    done, refused = {}, {}
    for name, record in state["stages"].items():
        outputs = record.get("outputs")
        problems = (["no output manifest (recorded by an older ftlab)"] if outputs is None
                    else manifest_problems(run_dir, outputs))
        if problems:
            refused[name] = "; ".join(problems[:3]) + (f"; {len(problems) - 3} more"
                                                       if len(problems) > 3 else "")
        else:
            done[name] = StageRecord(record["fingerprint"],
                                     StageResult.from_json(record["result"]))
    return done, refused


def to_run(planned: list[PlannedStage], done: dict[str, StageRecord]) -> list[str]:
    """Names of the stages a run will run (the others it reuses): what :func:`chain` does
    with ``done``, found by chaining with stand-ins that run nothing."""
    ran: list[str] = []

    def pretend(stage: PlannedStage, model: ModelRef) -> StageResult:
        ran.append(stage.name)
        return StageResult(model)

    chain(planned, done, ModelRef(EMBEDDED), pretend, lambda stage, result: None)
    return ran


def input_signature(model: ModelRef, run_dir: Path) -> list:
    """What identifies the model a stage starts from on disk: its path (relative to the run
    folder when inside it) and the name, size and modification time of every file of its
    folder and adapters (a retrained upstream stage rewrites them)."""
    folders = [Path(p) for p in (model.path, *model.adapters) if Path(p).is_dir()]
    return [_portable(model.path, run_dir),
            [[_portable(str(folder), run_dir), *entry]
             for folder in folders for entry in folder_listing(folder)]]


def stage_folder(folder: Path, stage_fingerprint: str, model: ModelRef, run_dir: Path) -> Path:
    """``folder``, ready for a stage to run in.

    A folder left by an interrupted run of the same stage on the same input is kept, so the
    stage's trainer resumes from its checkpoints; one from other settings or another input is
    emptied first. A non-empty folder ftlab did not write is refused.
    """
    if not folder.resolve().is_relative_to(run_dir.resolve()):  # stage names are plain
        raise ConfigError(f"{folder}: a stage folder must lie inside the run folder {run_dir}")
    marker = folder / STAGE_MARKER
    want = {"fingerprint": stage_fingerprint, "input": input_signature(model, run_dir)}
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
                 print_fn: Callable[[str], None] = print, source: Path | None = None,
                 planned: list[PlannedStage] | None = None,
                 reuse: tuple[dict[str, StageRecord], dict[str, str]] | None = None) -> dict:
    """Plan, measure the starting model, chain the stages, write the report.

    ``source``: the config file, for file:line in plan errors. ``planned`` and ``reuse``:
    :func:`plan` and :func:`reusable` already computed by the caller (``ftlab run`` prints
    them first), so data files and outputs are not hashed twice. ``print_fn`` gets one line
    per event: a stage starting, its data summary, a resume, a stage whose recorded outputs
    changed. Returns the run summary (as ``metrics.json``): ``baseline`` figures and each
    stage's result, in order, plus ``seconds_this_run`` and ``reused_stages``.
    """
    from ftlab.pipeline.report import write_report

    planned = planned if planned is not None else plan(config, source)
    quiet_loading()
    run_dir = Path(config.run_dir)
    main = ranks().is_main

    def open_run() -> tuple[dict, tuple[dict[str, StageRecord], dict[str, str]]]:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        state = read_state(run_dir)
        return state, reuse if reuse is not None else reusable(state, run_dir)

    state, (done, refused) = on_main(open_run)
    for name, why in refused.items():
        if any(p.name == name for p in planned):
            print_fn(f"stage {name}: its recorded outputs changed ({why}); it runs again, and "
                     "every stage after it")
    tokenizer = load_model_tokenizer(config.model)
    start = ModelRef(config.model.name_or_path if config.model.name_or_path != EMBEDDED else EMBEDDED)
    started = time.perf_counter()
    if state["baseline"] is None or state["baseline"].get("model") != config.model.model_dump(mode="json"):
        def baseline() -> dict:
            eval_config = next((s.eval for s in config.stages if s.eval), None) or EvalConfig()
            figures, samples = measure_baseline(
                config.model, eval_config,
                lambda: measure(load_model(start, config.model.dtype), tokenizer, eval_config,
                                heldout_pairs(eval_config, tokenizer), progress), print_fn)
            state["baseline"] = {"model": config.model.model_dump(mode="json"),
                                 "metrics": figures, "samples": samples}
            write_state(run_dir, state)
            return state["baseline"]
        state["baseline"] = on_main(baseline)

    ran: list[str] = []

    def run_one(stage: PlannedStage, model: ModelRef) -> StageResult:
        ran.append(stage.name)
        print_fn(f"stage {stage.name}: {stage.stage.describe()}")
        folder = on_main(lambda: stage_folder(run_dir / stage.name, stage.fingerprint, model,
                                              run_dir))
        began = time.perf_counter()
        earlier = {p.name: StageResult.from_json(state["stages"][p.name]["result"])
                   for p in planned[:planned.index(stage)] if p.name in state["stages"]}
        ctx = StageContext(config, stage.config, folder, model, tokenizer, progress, earlier,
                           state["baseline"]["metrics"], print_fn)
        try:  # training stages train on every process; the others run on rank 0 alone
            result = broadcast(stage.stage.run(ctx) if stage.stage.trains
                               else on_main(lambda: stage.stage.run(ctx)))
        except FtlabError as e:  # say which stage: a run has several with the same sections
            raise type(e)(f"stage {stage.name}: {e}") from e
        result.metrics["seconds"] = time.perf_counter() - began
        return result

    def record(stage: PlannedStage, result: StageResult) -> None:
        state["stages"][stage.name] = {
            "fingerprint": stage.fingerprint, "result": result.to_json(),
            "outputs": outputs_manifest(run_dir, result, run_dir / stage.name) if main else {}}
        later = [p.name for p in planned[planned.index(stage) + 1:]]
        for name in later:  # their inputs changed: never reuse them
            state["stages"].pop(name, None)
        if main:
            write_state(run_dir, state)
            write_report(run_dir, config, state, planned)

    chain(planned, done, start, run_one, record)
    summary = on_main(lambda: write_report(run_dir, config, state, planned))
    summary["seconds_this_run"] = time.perf_counter() - started
    summary["reused_stages"] = [p.name for p in planned if p.name not in ran]
    return summary
